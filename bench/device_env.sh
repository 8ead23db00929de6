# Sourced by bench/h200.sh and bench/gpus2.sh on a device machine with no network: install the
# carried wheels and flash-attn-4's CuTe DSL tree once per machine, then export PYTHONPATH.
# The CuTe DSL tree travels as cutlass.tar.xz split in parts under .gpu/ (one call carries at most
# 64 MiB): each call copies the parts it carries to /tmp/carry, and the first call that has them
# all unpacks them, so the parts can come in calls sent back to back while the machine stays warm.
# A folder named site-packages: quack (flash-attn-4's GEMMs) fingerprints epilogue code and treats
# functions from a site-packages or dist-packages path as installed libraries; anywhere else it
# recurses into cutlass's internals and fails ("has no fail-closed semantic key").
SITE=${SITE:-/tmp/py/site-packages}
mkdir -p /tmp/carry "$SITE"
cp .gpu/cutlass.tar.xz.part-* /tmp/carry/ 2>/dev/null
if [ ! -e "$SITE/.wheels" ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    && touch "$SITE/.wheels" || exit 1
fi
parts=$(ls /tmp/carry/cutlass.tar.xz.part-* 2>/dev/null | wc -l)
if [ ! -e "$SITE/.cutlass" ] && [ "$parts" -ge 2 ]; then
  cat /tmp/carry/cutlass.tar.xz.part-* | python3 -c 'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])' "$SITE" \
    && touch "$SITE/.cutlass" || exit 1
fi
export PYTHONPATH=$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 PYTHONUNBUFFERED=1
