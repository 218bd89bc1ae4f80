"""Command line: python -m grmseg <command>.

WSSS stages (settings by flags and/or --config file.json|yaml or a shipped preset --config voc|coco; everything
under --run-dir, whose config.json later stages continue from): train-cls, make-cam, train-irn (or train-aff),
refine, train-seg, eval; demo runs them all (synthetic data by default); ablation compares with/without the
knowledge GCN head and with/without GRM (also GRM on the identity graph); context-control checks that the context
dataset needs context. Training stages run data-parallel when launched by
torchrun --nproc_per_node N -m grmseg ...
Also: layer-demo (GRM inside a torchvision DeepLabV3, one timed training step), synthetic-data and info.
A bad setting, a missing or corrupt file ends with one line naming it and exit status 2 (--debug: the traceback).
"""

from __future__ import annotations

import argparse
import sys

STAGE_HELP = {
    "train-cls": "train the multi-label classifier (+ knowledge GCN head)",
    "make-cam": "multi-scale + flip CAMs of the cam split",
    "train-irn": "train IRN's boundary net on the confident CAM regions (aff_source irn, the default)",
    "train-aff": "train PSA's AffinityNet on the confident CAM regions (aff_source affnet)",
    "refine": "affinity + random walk -> pseudo-mask PNGs",
    "train-seg": "train the segmentation net (GRM on/off) on the pseudo masks",
    "eval": "mIoU + confusion matrices of CAMs, pseudo masks and segmentation; report.md",
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command. Returns the exit status."""
    from grmseg.pipeline.config import add_config_arguments, demo_preset

    parser = argparse.ArgumentParser(prog="grmseg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    layer = sub.add_parser("layer-demo", help="GRM inside DeepLabV3: one training step on a random batch, timed")
    layer.add_argument("--batch", type=int, default=2, help="images per batch (>= 2)")
    layer.add_argument("--size", type=int, default=129, help="image side in pixels")
    layer.add_argument("--device", default="cpu", help="cpu or cuda")
    layer.add_argument("--seed", type=int, default=0, help="seed of the random weights and batch")
    sub.add_parser("info", help="what was built and which backends run here")
    syn = sub.add_parser("synthetic-data", help="write the synthetic scenes as a VOC or COCO folder of odd sizes")
    syn.add_argument("--out", required=True, help="the folder to write (then: --dataset voc --data-root OUT)")
    syn.add_argument("--layout", choices=("voc", "coco"), default="voc", help="folder layout and class indices")
    syn.add_argument("--train-images", type=int, default=1024, help="images in the train split")
    syn.add_argument("--val-images", type=int, default=128, help="images in the val split")
    syn.add_argument("--seed", type=int, default=0, help="scene seed (the square dataset's scenes for the same seed)")
    syn.add_argument("--min-size", type=int, default=61, help="smallest image side")
    syn.add_argument("--max-size", type=int, default=95, help="largest image side (multiples of 16 are skipped)")
    syn.add_argument("--any-size", action="store_true", help="allow sides that are multiples of 16 too")
    syn.add_argument("--scenes", choices=("synthetic", "context"), default="synthetic",
                     help="which built-in scenes: synthetic (appearance decides) or context (look-alike cat and dog "
                     "told apart by their companions)")
    for name, text in STAGE_HELP.items():
        add_config_arguments(sub.add_parser(name, help=text))
    demo_defaults = {**demo_preset(), "run_dir": "runs/demo"}
    demo = sub.add_parser("demo", help="the whole WSSS pipeline on the synthetic dataset (a few CPU minutes)")
    add_config_arguments(demo, demo_defaults)
    demo.add_argument("--fresh", action="store_true",
                      help="delete an earlier run in --run-dir first (default: resume it, skipping finished stages)")
    abl = sub.add_parser("ablation", help="knowledge GCN head on/off x GRM on/off/identity graph (--dataset context: "
                         "where context decides)")
    add_config_arguments(abl, {**demo_preset(), "run_dir": "runs/ablation"})
    abl.add_argument("--quick", action="store_true", help="fewer images and epochs")
    abl.add_argument("--seeds", default="0", help="comma-separated seeds (results averaged)")
    abl.add_argument("--fresh", action="store_true", help="remove earlier ablation runs first")
    ctl = sub.add_parser("context-control", help="positive control of the context dataset: a context-blind net on "
                         "the true masks, without and with the true image-level labels")
    add_config_arguments(ctl, {**demo_preset("context"), "run_dir": "runs/context-control"})
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (OSError, ValueError, TypeError, ImportError) as exc:  # bad input; anything else is a bug: traceback
        if args.debug:
            raise
        print(f"grmseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:

    if args.command == "layer-demo":
        from grmseg.demo import run_demo

        run_demo(batch=args.batch, size=args.size, device=args.device, seed=args.seed)
    elif args.command == "synthetic-data":
        from grmseg.pipeline.datasets.synthetic import write_layout

        root = write_layout(args.out, args.layout, args.train_images, args.val_images, args.seed, args.min_size,
                            args.max_size, odd_only=not args.any_size, spec=args.scenes)
        print(f"wrote {args.train_images} + {args.val_images} {args.scenes} images to {root} ({args.layout} layout); "
              "run e.g. "
              f"python -m grmseg demo --dataset {args.layout} --data-root {root}")
    elif args.command == "info":
        import grmseg

        summary = getattr(grmseg, "build_summary", None)
        if summary is not None:
            print(summary())
        else:
            for status in grmseg.backends().values():
                print(status)
    else:
        _pipeline(args)
    return 0


def _pipeline(args: argparse.Namespace) -> None:
    from grmseg.pipeline import runner, stages
    from grmseg.pipeline import runtime as rt
    from grmseg.pipeline.config import config_from_args, demo_preset
    from grmseg.pipeline.report import write_report

    if args.command == "demo":
        cfg = config_from_args(args, {**demo_preset(args.dataset or "synthetic"), "run_dir": "runs/demo"})
        runner.run_demo(cfg, fresh=args.fresh)
    elif args.command == "context-control":
        from grmseg.pipeline.control import run_context_control

        run_context_control(config_from_args(args, {**demo_preset("context"), "run_dir": "runs/context-control"}))
    elif args.command == "ablation":
        from grmseg.pipeline.ablation import quick_overrides, run_ablation

        preset = {**demo_preset(args.dataset or "synthetic"), "run_dir": "runs/ablation"}
        if args.quick:
            preset.update(quick_overrides())
        cfg = config_from_args(args, preset)
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        run_ablation(cfg, seeds, fresh=args.fresh)
    else:
        cfg = config_from_args(args)
        out = stages.STAGES[args.command](cfg)
        if args.command == "eval" and rt.is_main():
            write_report(cfg, out)


if __name__ == "__main__":
    sys.exit(main())
