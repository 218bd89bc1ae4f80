"""Compile Triton kernels with Triton's real compiler for a GPU target (no GPU needed), in a fresh process.

Under ``TRITON_INTERPRET=1`` (the test suite's CPU setting) ``@triton.jit`` makes interpreter functions, which the
compiler cannot take, so tests run this module as a script without that variable::

    python tests/_triton_compile.py MODULE < cases.json  >  results.json

``cases``: ``[[id, kernel name, {arg: type}, {constexpr: value}], ...]``; each result: ``{"ok", "error", "spill"}``
(``spill``: stack bytes from the cuobjdump Triton ships, or None when it is absent).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET = ("cuda", 90, 32)  # H100 / H200


def compile_kernels(module: str, cases: list) -> dict[str, dict]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = importlib.import_module(module)
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    out = {}
    for case_id, name, signature, constexprs in cases:
        sig = {**signature, **dict.fromkeys(constexprs, "constexpr")}
        try:
            compiled = triton.compile(ASTSource(getattr(mod, name), sig, constexprs), target=GPUTarget(*TARGET))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[case_id] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "spill": None}
            continue
        spill = None
        if tool.exists():
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                res = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                                     check=False)
            spill = sum(int(t.split(":")[1]) for t in res.stdout.split() if t.startswith("STACK:"))
        out[case_id] = {"ok": True, "error": "", "spill": spill}
    return out


def run_in_subprocess(module: str, cases: list, timeout: float = 600) -> dict[str, dict]:
    """:func:`compile_kernels` in a fresh interpreter without ``TRITON_INTERPRET``."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), module], input=json.dumps(cases),
                         capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"compiling {module} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(compile_kernels(sys.argv[1], json.load(sys.stdin))))
