"""The files in accelerate_configs/ as Accelerate reads them, and why their FSDP and DeepSpeed settings alone do not
select those engines on this CPU (tests/distributed/test_engines.py runs them for real, with test-only settings)."""

import glob
import os
import socket
import subprocess
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "accelerate_configs", "*.yaml")))

# What each file is for (accelerate_configs/README.md): the launcher, the number of processes, the precision.
EXPECTED = {
    "single_gpu.yaml": {"distributed_type": "NO", "num_processes": 1, "mixed_precision": "no", "use_cpu": False},
    "multi_gpu.yaml": {
        "distributed_type": "MULTI_GPU",
        "num_processes": 8,
        "mixed_precision": "bf16",
        "use_cpu": False,
    },
    "fsdp2.yaml": {"distributed_type": "FSDP", "num_processes": 8, "mixed_precision": "bf16", "use_cpu": False},
    "fsdp2_offload.yaml": {
        "distributed_type": "FSDP",
        "num_processes": 8,
        "mixed_precision": "bf16",
        "use_cpu": False,
    },
    "deepspeed_zero3.yaml": {"distributed_type": "DEEPSPEED", "num_processes": 8, "use_cpu": False},
    # The torchrun launcher (MULTI_GPU) is what forms a gloo group of 2 on CPU; a free port avoids collisions.
    "cpu_2proc.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 2, "use_cpu": True, "main_process_port": 0},
}


def test_every_config_is_checked():
    assert sorted(os.path.basename(path) for path in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_accelerate_reads_the_config(path):
    # Accelerate's own loader, as `accelerate launch --config_file` uses it: an unknown top-level key is an error.
    config = load_config_from_file(path)
    name = os.path.basename(path)
    for field, value in EXPECTED[name].items():
        actual = getattr(config, field)
        assert getattr(actual, "value", actual) == value, (name, field)
    # Nested keys are not checked by the loader; `accelerate launch` turns each into its option of the same name.
    launch_options = vars(launch_command_parser().parse_args(["train.py"]))
    nested = {**config.fsdp_config, **config.deepspeed_config}
    assert not set(nested) - set(launch_options), f"{name}: unknown keys {sorted(set(nested) - set(launch_options))}"

    if name.startswith("fsdp2"):
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2
        assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2's full shard
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert fsdp["fsdp_offload_params"] is (name == "fsdp2_offload.yaml")
    else:
        assert not config.fsdp_config
    if name == "deepspeed_zero3.yaml":
        deepspeed = config.deepspeed_config
        assert deepspeed["zero_stage"] == 3
        assert deepspeed["zero3_init_flag"] is True
        assert deepspeed["zero3_save_16bit_model"] is True
    else:
        assert not config.deepspeed_config


# Run in a fresh interpreter: Accelerate's state is a process-wide singleton that must not leak into other tests.
# "trainer" sets up Accelerate as a DistillTrainer on CPU does: TrainingArguments(use_cpu=True) (DistillConfig, or a
# recipe's `use_cpu: true`) creates `PartialState(cpu=True)`, then Trainer creates `Accelerator()`. "partial_state"
# creates `PartialState(cpu=True)` alone.
PROBE = """
import os, sys
from accelerate import Accelerator, PartialState
from transformers import TrainingArguments

from hf_distill.run.process_group import leave_process_group

print("requested", os.environ.get("ACCELERATE_USE_FSDP"), os.environ.get("ACCELERATE_USE_DEEPSPEED"))
if sys.argv[2] == "trainer":
    args = TrainingArguments(output_dir=sys.argv[1], use_cpu=True, report_to=[])
    print("partial_state", args.distributed_state.distributed_type.value)
    accelerator = Accelerator()
    print("accelerator", accelerator.distributed_type.value, getattr(accelerator.state, "fsdp_plugin", None))
else:
    print("partial_state", PartialState(cpu=True).distributed_type.value)
leave_process_group()
"""


def probe(tmp_path, command, mode, env=None):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    result = subprocess.run(
        [*command, str(script), str(tmp_path / "out"), mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def test_an_fsdp_config_runs_ddp_on_cpu(tmp_path):
    """`accelerate launch` with fsdp2.yaml sets ACCELERATE_USE_FSDP=true, yet a CPU run gets DDP over gloo.

    accelerate/state.py (Accelerate 1.15): `AcceleratorState.__init__` turns FSDP on only inside
    `elif self.distributed_type in [DistributedType.MULTI_GPU, DistributedType.MULTI_MLU, ..., MULTI_NEURON]:` with
    `if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or fsdp_plugin is not None) ...:
    self.distributed_type = DistributedType.FSDP`, and `PartialState._prepare_backend` returns one of those types only
    `elif int(os.environ.get("LOCAL_RANK", -1)) != -1 and not cpu` and a GPU-like device exists; with `cpu` it returns
    `DistributedType.MULTI_CPU` (gloo).
    """
    config = os.path.join(ROOT, "accelerate_configs", "fsdp2.yaml")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", "1"]
    out = probe(tmp_path, launch, "trainer")
    assert out["requested"].split()[0] == "true"
    assert out["partial_state"] == "MULTI_CPU"
    assert out["accelerator"] == "MULTI_CPU None"  # no FSDP plugin either: the model would be wrapped in DDP


def test_deepspeed_is_never_selected_on_cpu(tmp_path):
    """ACCELERATE_USE_DEEPSPEED=true in a launched process (LOCAL_RANK set), yet `PartialState(cpu=True)` is MULTI_CPU.

    accelerate/state.py (Accelerate 1.15): `PartialState.__init__` reads ACCELERATE_USE_DEEPSPEED only under
    `if not cpu and self.backend != "xla": if int(os.environ.get("LOCAL_RANK", -1)) != -1:`, and only there sets the
    flag behind `if use_deepspeed: self.distributed_type = DistributedType.DEEPSPEED`. (`AcceleratorState.__init__`
    has its own `elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not cpu:`, with the
    `cpu` of `Accelerator(cpu=...)`, which Trainer leaves False.)
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The environment `accelerate launch` gives each process it starts (one process here).
    env = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    out = probe(tmp_path, [sys.executable], "partial_state", env=env)
    assert out["requested"].split()[1] == "true"
    assert out["partial_state"] == "MULTI_CPU"
