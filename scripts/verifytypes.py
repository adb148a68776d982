"""Check the type completeness of natsync's public API with pyright's ``--verifytypes``.

Runs ``basedpyright --verifytypes natsync --ignoreexternal`` (the ``lint`` extra installs
basedpyright, which ships its own node) and fails when the score is below ``--min``
percent.  Prints the score and, per module, the exported symbols whose type is ambiguous
or unknown (``--list`` prints each of them with pyright's reason).

pyright does not follow the import hook of an editable install, so it runs from a
temporary directory with the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=100.0, help="minimum score in percent")
    parser.add_argument("--list", action="store_true", help="list every incomplete symbol")
    parser.add_argument("--package", default="natsync")
    args = parser.parse_args(argv)

    exe = Path(sys.executable).parent / "basedpyright"
    if not exe.exists():
        print(f"{exe} not found: pip install basedpyright (the lint extra has it)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [str(exe), "--verifytypes", args.package, "--ignoreexternal", "--outputjson"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        return 2
    tc = report["typeCompleteness"]
    incomplete = [
        s for s in tc["symbols"] if s["isExported"] and not (s["isTypeKnown"] and not s["isTypeAmbiguous"])
    ]
    by_module: collections.Counter[str] = collections.Counter()
    for sym in incomplete:
        parts = sym["name"].split(".")
        module = ".".join(p for p in parts[:-1] if p[:1].islower()) or sym["name"]
        by_module[module] += 1
        if args.list:
            reasons = "; ".join(d["message"].splitlines()[0] for d in sym["diagnostics"][:1])
            print(f"{sym['name']}: {reasons}")
    for module, count in sorted(by_module.items()):
        print(f"  {module}: {count} symbol(s) with an ambiguous or unknown type")
    score = 100.0 * tc["completenessScore"]
    summary = report["summary"]
    print(
        f"pyright --verifytypes {args.package}: {score:.1f}% type completeness "
        f"({len(incomplete)} exported symbols incomplete; {summary['errorCount']} errors); "
        f"required {args.min:g}%"
    )
    return 0 if score + 1e-9 >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
