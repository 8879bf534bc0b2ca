"""Data-parallel training on CPU (gloo, 2 processes): the same global batch, the same gradients,
bit-identical between two runs, and what the one-process run trains up to float rounding."""

from __future__ import annotations

import json
import os
import socket
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from cirl import distributed
from cirl.data.tiles import TileDataset
from cirl.method.step import _new_model, compute_loss
from cirl.method.train_config import TrainConfig
from cirl.models.checkpoint import load_checkpoint
from cirl.orchestration.cli import main

pytestmark = pytest.mark.smoke

TRAIN = ["--model", "unet-small", "--width", "8", "--batch-size", "2", "--crop", "64",
         "--k", "4", "--device", "cpu", "--crack-crops", "0.5", "--pos-weight", "10",
         "--dice", "0.5", "--no-track", "-q"]  # fmt: skip
CFG = TrainConfig(model="unet-small", width=8, crop=64, k=4, batch_size=2, pos_weight=10.0,
                  dice=0.5, crack_crops=0.5, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    argv = ["synth", "--out", str(root / "raw"), "--n", "6", "--width", "256", "--height", "192"]
    assert main(argv) == 0
    argv = ["prepare", "--source", str(root / "raw"), "--format", "folder", "--out",
            str(root / "prep"), "--tile", "128", "--split", "0.6,0.2,0.2", "-q"]  # fmt: skip
    assert main(argv) == 0
    return root / "prep"


def _batch(data, indices):
    tiles = TileDataset(data, "train", crop=64, augment=True, seed=0, crack_crops=0.5)
    items = [tiles[i] for i in indices]
    return {k: torch.stack([item[k] for item in items]) for k in ("image", "mask", "valid")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank, size, port, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank), CIRL_DDP_WORKER="1")  # fmt: skip
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = _new_model(CFG)
    with distributed.joined(distributed.World.from_env(), torch.device("cpu")):
        distributed.global_batch_norm(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)
        batch = _batch(data, [rank])  # this process's half of the global batch [0, 1]
        loss, parts = compute_loss(CFG, ddp(batch["image"]), batch, None)
        loss.backward()
        norms = [m.running_var.clone() for m in model.modules() if hasattr(m, "running_var")]
        grads = [p.grad.clone() for p in model.parameters()]
        seen = {"loss": loss.detach(), "parts": parts, "norms": norms, "grads": grads}
        torch.save(seen, f"{out}.{rank}")


def test_two_processes_compute_the_one_process_gradient(prepared):
    """The mechanism: BCE with pos_weight, soft Dice and batch norm pooled over the global
    batch, DDP's averaging: each process's gradient is the one-process gradient of the whole
    batch, to float rounding."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = _new_model(CFG)
    batch = _batch(prepared, [0, 1])
    loss, parts = compute_loss(CFG, model(batch["image"]), batch, None)
    loss.backward()
    one = torch.cat([p.grad.flatten() for p in model.parameters()])
    norms = [m.running_var for m in model.modules() if hasattr(m, "running_var")]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(2, _free_port(), str(prepared), f"{tmp}/r"), nprocs=2)
        ranks = [torch.load(f"{tmp}/r.{r}") for r in range(2)]
    for seen in ranks:
        assert seen["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        assert seen["parts"]["dice"] == pytest.approx(parts["dice"], rel=1e-5)
        two = torch.cat([g.flatten() for g in seen["grads"]])
        assert ((two - one).norm() / one.norm()).item() < 1e-5
        pairs = zip(norms, seen["norms"], strict=True)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in pairs)
    # and the two processes hold the same gradient, bit for bit
    pairs = zip(ranks[0]["grads"], ranks[1]["grads"], strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def _flat(state):
    return torch.cat([v.float().flatten() for v in state.values() if v.is_floating_point()])


def test_ddp_runs_are_bit_identical_and_train_what_one_process_trains(prepared, tmp_path):
    steps = ["--epochs", "2", "--steps-per-epoch", "3"]
    runs = {}
    for name, extra in (("one", []), ("ddp", ["--nproc", "2"]), ("again", ["--nproc", "2"])):
        assert main(["train", "--data", str(prepared), "--out", str(tmp_path / name),
                     *TRAIN, *steps, *extra]) == 0  # fmt: skip
        runs[name] = load_checkpoint(tmp_path / name / "last.pt")
    ddp, again, one = runs["ddp"], runs["again"], runs["one"]
    # determinism: two data-parallel runs give the same weights, bit for bit
    assert all(torch.equal(ddp["model"][k], again["model"][k]) for k in ddp["model"])
    # parity: the per-epoch losses agree to float rounding; the weights, after 6 Adam steps
    # (whose first moves are lr * sign(grad), so rounding flips the sign of a near-zero
    # gradient), within 3% of the distance they travelled from the initial weights
    for a, b in zip(one["history"], ddp["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    torch.manual_seed(0)
    start = _flat(_new_model(TrainConfig(model="unet-small", width=8)).state_dict())
    travelled = (_flat(one["model"]) - start).norm()
    apart = (_flat(one["model"]) - _flat(ddp["model"])).norm()
    assert (apart / travelled).item() < 0.03, (apart / travelled).item()
    # the run says its world size; rank 0 alone wrote the folder
    assert ddp["provenance"]["world_size"] == 2 and "world_size" not in one["provenance"]
    assert ddp["config"]["nproc"] == 2
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    # resume: the data-parallel run goes on from its last epoch, as it would have run
    longer = [*TRAIN, "--epochs", "3", "--steps-per-epoch", "3", "--nproc", "2"]
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "ddp"), *longer,
                 "--resume"]) == 0  # fmt: skip
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "long"), *longer]) == 0
    resumed = load_checkpoint(tmp_path / "ddp" / "last.pt")
    straight = load_checkpoint(tmp_path / "long" / "last.pt")
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])


def test_nproc_must_divide_the_batch(prepared, tmp_path, capsys):
    argv = ["train", "--data", str(prepared), "--out", str(tmp_path / "x"), *TRAIN,
            "--epochs", "1", "--steps-per-epoch", "1", "--nproc", "3"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nproc" in err and "must divide batch_size (2)" in err


def test_a_pytorchjob_pods_environment_is_not_a_world_of_its_own(monkeypatch):
    """The training operator sets WORLD_SIZE and RANK in every pod, for the launcher: only the
    processes cirl's launcher starts are ranks of a data-parallel run."""
    from cirl.method import ddp

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.setenv("MASTER_ADDR", "job-master-0")
    monkeypatch.setenv("MASTER_PORT", "23456")
    monkeypatch.delenv("CIRL_DDP_WORKER", raising=False)
    assert distributed.World.from_env().size == 1
    assert ddp.nodes() == 2
    command = ddp.command(4, "run.json")
    assert "--standalone" not in command and "--nproc_per_node=4" in command
    env = ddp._env(4)
    assert env["CIRL_DDP_WORKER"] == "1" and env["PET_MASTER_ADDR"] == "job-master-0"
    monkeypatch.setenv("PET_NNODES", "1:4")
    assert ddp.nodes() == 4
    monkeypatch.delenv("PET_NNODES")
    assert "--standalone" in ddp.command(2, "run.json")


def test_the_pytorchjob_manifest_runs_cirl_train_as_the_operator_expects():
    """pipelines/pytorchjob.yaml: the operator's v1 API, its container name, one GPU per
    process, and commands cirl's own parser accepts (Master tracks, Worker does not)."""
    from pathlib import Path

    import yaml

    from cirl.orchestration.cli import build_parser

    job = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / "pytorchjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    nproc = int(job["spec"]["nprocPerNode"])
    commands = {}
    for role, spec in job["spec"]["pytorchReplicaSpecs"].items():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == nproc
        command = container["command"]
        assert command[:2] == ["cirl", "train"]
        args = build_parser().parse_args(command[1:])
        assert int(args.nproc) == nproc
        commands[role] = [a for a in command if a != "--no-track"]
        assert ("--no-track" in command) is (role == "Worker")
    assert commands["Master"] == commands["Worker"]
