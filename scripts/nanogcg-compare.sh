#!/usr/bin/env bash
# Times nanoGCG against `armsrace attack` on the same checkpoint (scripts/nanogcg_compare.py).
# Creates .venv-nanogcg. If .venv-fixtures (made by scripts/make-fixtures.sh) exists, its
# torch is reused through a .pth file and only nanoGCG, transformers 4.47.1 (nanoGCG pins
# <= 4.47.1) and scipy are installed; otherwise `pip install nanogcg` pulls everything
# (~5 GB with torch). Arguments go to the Python script (--steps N, --threads N).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-nanogcg
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    if [ -x .venv-fixtures/bin/python ]; then
        site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        fixtures=$(.venv-fixtures/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        # After the venv's own site-packages: its transformers 4.47.1 wins over 5.x there.
        echo "$fixtures" > "$site/zz-fixtures.pth"
        "$venv/bin/pip" install --quiet nanogcg==0.3.0 --no-deps
        "$venv/bin/pip" install --quiet "transformers==4.47.1" scipy tqdm
    else
        "$venv/bin/pip" install --quiet nanogcg==0.3.0
    fi
fi
cargo build --release --quiet
exec "$venv/bin/python" scripts/nanogcg_compare.py "$@"
