#!/usr/bin/env bash
# The Python package's checks, run by .ci/run (and by hand): build the wheel, install it into
# a vLLM 0.33.0 virtual environment cached between runs, run the package's own tests and
# vLLM's own tiering tests (from vLLM's source release) with kvtier's tier substituted.
#
# Cache: ${KVTIER_CACHE:-$HOME/.cache/kvtier}/vllm-0.33.0 (the venv; about 6 GB, ~8 minutes to
# create on a fresh machine) and .../vllm-src/vllm-0.33.0.tar.gz (checked by its sha256).
# In CI (CI=true) a vLLM that cannot be installed fails this script; elsewhere too, unless
# KVTIER_SKIP_VLLM=1 says to skip the vLLM parts.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

VLLM_VERSION=0.33.0
SRC_URL=https://files.pythonhosted.org/packages/f7/25/aa5684e9c59d6fc75f78926b7f15e8d9adc7de2d9e6e7575b80776ad8169/vllm-0.33.0.tar.gz
SRC_SHA256=f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112
cache=${KVTIER_CACHE:-$HOME/.cache/kvtier}
venv=$cache/vllm-$VLLM_VERSION
tarball=$cache/vllm-src/vllm-$VLLM_VERSION.tar.gz

fail_or_skip() {
  echo "kvtier python: $*" >&2
  if [ "${CI:-}" != true ] && [ "${KVTIER_SKIP_VLLM:-}" = 1 ]; then
    echo "kvtier python: SKIPPED (KVTIER_SKIP_VLLM=1, not in CI)"
    exit 0
  fi
  exit 1
}

vllm_ok() {
  "$venv/bin/python" -c "import vllm; assert vllm.__version__ == '$VLLM_VERSION'" >/dev/null 2>&1
}

if ! vllm_ok; then
  echo "creating the vLLM $VLLM_VERSION environment at $venv (once per machine; several minutes)"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" || fail_or_skip "cannot create a virtual environment"
  "$venv/bin/pip" install --quiet --upgrade pip || fail_or_skip "cannot upgrade pip"
  "$venv/bin/pip" install --quiet "vllm==$VLLM_VERSION" || fail_or_skip "cannot install vllm==$VLLM_VERSION"
  vllm_ok || fail_or_skip "vllm==$VLLM_VERSION does not import after installation"
fi
"$venv/bin/pip" install --quiet maturin pytest || fail_or_skip "cannot install maturin and pytest"

if ! echo "$SRC_SHA256  $tarball" | sha256sum -c --status 2>/dev/null; then
  echo "fetching vLLM's $VLLM_VERSION source release (for its tests)"
  mkdir -p "$(dirname "$tarball")"
  curl -fsSL --retry 3 -o "$tarball.part" "$SRC_URL" || fail_or_skip "cannot fetch $SRC_URL"
  echo "$SRC_SHA256  $tarball.part" | sha256sum -c --status || fail_or_skip "vLLM's source release fails its sha256"
  mv "$tarball.part" "$tarball"
fi

echo "building the kvtier wheel (maturin, abi3)"
rm -rf target/wheels
"$venv/bin/maturin" build --release --quiet -m python/Cargo.toml -o target/wheels
"$venv/bin/pip" install --quiet --force-reinstall --no-deps target/wheels/kvtier-*.whl

# The venv's python runs pytest from the repository root (so `kvtier` is the installed
# package, not python/kvtier without its native module).
export PYTHONDONTWRITEBYTECODE=1
echo "kvtier's own tests, through vLLM's TieringOffloadingSpec and TieringOffloadingManager"
"$venv/bin/python" -m pytest -p no:cacheprovider -q python/tests

vtests=$(mktemp -d)
trap 'rm -rf "$vtests"' EXIT
# Only the tests: vLLM's source tree would shadow the installed (built) vllm package.
tar xzf "$tarball" -C "$vtests" --strip-components=1 --wildcards "vllm-$VLLM_VERSION/tests/*"
for executor in auto threaded; do
  echo "vLLM $VLLM_VERSION's tiering tests (test_fs_tier.py, test_tiering_offloading.py) with kvtier's tier substituted, executor $executor"
  (cd "$vtests" && KVTIER_VLLM_EXECUTOR=$executor PYTHONPATH="$repo/python/vllm_tests" \
    "$venv/bin/python" -m pytest -p no:cacheprovider -q --confcutdir=tests/v1/kv_offload -p kvtier_substitute \
      tests/v1/kv_offload/tiering/test_fs_tier.py tests/v1/kv_offload/tiering/test_tiering_offloading.py)
done
