//! Issue 11, item 16: an FS tier that cannot open says what it was doing, and where. Each
//! failure a user can cause with a wrong `root_dir` names the path and the operation.

use std::io;
use std::path::Path;

use kvtier_fs::namespace::{Layout, RunConfig};
use kvtier_fs::{FsTier, FsTierConfig};

fn open(root: &Path) -> io::Error {
    let config = FsTierConfig::new(root, RunConfig { model_name: "m/errors".into(), ..RunConfig::default() }, 4096);
    let no_executor = |_| Err(io::Error::other("the executor is never reached"));
    FsTier::open(&config, no_executor).map(|_| ()).unwrap_err()
}

#[test]
fn a_tier_that_cannot_open_names_the_path_and_the_operation() {
    // A root that cannot be created (a pseudo file system).
    let e = open(Path::new("/proc/kvtier"));
    let text = e.to_string();
    assert!(text.starts_with("cannot create directory /proc/kvtier/m_errors_"), "{text}");

    // A root under a regular file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let text = open(&file.join("root")).to_string();
    assert!(text.starts_with(&format!("cannot read {}/root/m_errors_", file.display())), "{text}");
    assert!(text.contains("config.json") && text.contains("Not a directory"), "{text}");

    // The rank directory's name taken by a file.
    let root = dir.path().join("root");
    let run = RunConfig { model_name: "m/errors".into(), ..RunConfig::default() };
    let config = FsTierConfig::new(&root, run, 4096);
    let layout = Layout::new(&root, &config.effective_run_config(), 0);
    assert!(open(&root).to_string().contains("executor is never reached"), "a good root opens up to the executor");
    std::fs::remove_dir_all(layout.rank_dir()).unwrap();
    std::fs::write(layout.rank_dir(), b"x").unwrap();
    let e = open(&root);
    let text = e.to_string();
    assert!(text.starts_with(&format!("cannot create directory {}: ", layout.rank_dir().display())), "{text}");
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "the kind is kept");

    // config.json that describes another run.
    std::fs::remove_file(layout.rank_dir()).unwrap();
    let other = RunConfig { model_name: "m/errors".into(), tp_size: 2, ..RunConfig::default() };
    std::fs::write(layout.config_path(), kvtier_fs::namespace::canonical_json(&other)).unwrap();
    let e = open(&root);
    assert!(e.to_string().starts_with(&layout.config_path().display().to_string()), "{e}");
    assert!(e.to_string().contains("tp_size"), "{e}");
}
