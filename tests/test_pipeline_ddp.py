"""Data-parallel training (DDP) with torchrun: 2 CPU processes on the gloo backend, tiny synthetic config."""

import json
import os
import subprocess
import sys
import textwrap

from grmseg.pipeline.config import PipelineConfig, tiny_preset

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from grmseg.pipeline import stages
    from grmseg.pipeline.config import PipelineConfig

    cfg = PipelineConfig.from_dict(json.load(open(sys.argv[1])))
    stages.train_cls(cfg)
    assert dist.is_initialized() and dist.get_world_size() == 2 and dist.get_backend() == "gloo"
    stages.make_cam(cfg)
    stages.train_irn(cfg)
    stages.refine(cfg)
    stages.train_seg(cfg)
    stages.evaluate(cfg)
    dist.destroy_process_group()
""")


def test_two_process_gloo_training(tmp_path):
    run = tmp_path / "run"
    cfg = {**PipelineConfig.from_dict(tiny_preset()).to_dict(), "run_dir": str(run), "device": "cpu",
           "syn_train_images": 16, "cls_epochs": 2, "seg_epochs": 2}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "ddp.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "ddp.py"), str(tmp_path / "cfg.json")],
        capture_output=True, text=True, check=False, timeout=110, env=env, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (run / "log.txt").read_text()
    assert "[cls] epoch 2/2" in log and "[seg] epoch 2/2" in log and "[irn] epoch 1/1" in log
    assert "(16 images" in log and "2 process(es)" in log  # the epoch loss is all-reduced over both processes
    assert "[rank 1]" in log and "[rank 0]" in log
    assert (run / "cls" / "model.pt").is_file() and (run / "seg" / "model.pt").is_file()
    assert len(list((run / "cams").glob("*.npz"))) == 16  # sharded over the two ranks
    assert len(list((run / "pseudo").glob("*.png"))) == 16
    assert json.loads((run / "eval" / "eval.json").read_text())["results"]["segmentation (GRM)"]["images"] == 8
