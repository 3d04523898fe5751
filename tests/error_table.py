"""Write docs/errors.md: every bad input the tests try, with the message it gives.

    python tests/error_table.py            # rewrite docs/errors.md
    python tests/error_table.py --check    # exit 1 if docs/errors.md is stale

Rows come from tests/bad_inputs.py (the cases tests/test_errors.py and
tests/test_cli.py run),
so the table and the tests cannot drift apart.
"""
import contextlib
import io
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One CPU device, whatever the caller simulates: messages that name the count
# (--devices) read the same in every run.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"


def op_rows():
    from bad_inputs import OP_CASES
    for name, (call, error, _) in OP_CASES.items():
        try:
            call()
        except error as e:
            yield name, "op", type(e).__name__, str(e)


def cli_rows(workdir):
    """Each case in a folder of its own, as tests/test_cli.py runs it (cases share
    names such as a_run: one's lock file must not answer for the next), and its
    message checked against the case's pattern, so the table shows what the test
    asserts."""
    import re
    from bad_inputs import cli_error_cases, restored_environ
    from jaxbp import cli
    for name in cli_error_cases(workdir):
        folder = os.path.join(workdir, name)
        os.makedirs(folder)
        make_args, code, pattern = cli_error_cases(folder)[name]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), restored_environ():
            try:
                rc = cli.main(make_args())
            except SystemExit as e:
                rc = e.code
        lines = [l for l in err.getvalue().splitlines() if l.startswith("jaxbp: error")]
        message = lines[-1] if lines else err.getvalue().strip()
        if rc != code or not re.search(pattern, message):
            raise SystemExit(f"{name}: exit {rc}, {message!r}; the case expects exit {code} and {pattern!r}")
        yield name, f"CLI (exit {rc})", "", message.replace(folder, "DIR")


def table():
    import tempfile
    rows = list(op_rows())
    with tempfile.TemporaryDirectory() as d:
        rows += [(n, w, t, m.replace(d, "DIR")) for n, w, t, m in cli_rows(d)]
    out = ["# Bad input and the message it gives", "",
           f"Every row is a test (`tests/test_errors.py`, `tests/test_cli.py`); {len(rows)} rows.",
           "Op errors are raised before XLA runs; command-line errors are one line on stderr",
           "(exit 2 for usage errors, 1 for other failures; `--debug` shows the traceback).", "",
           "| case | where | exception | message |", "|---|---|---|---|"]
    escape = lambda m: m.replace("|", "\\|").replace("\n", " ")
    out += [f"| {n} | {w} | {t} | {escape(m)} |" for n, w, t, m in rows]
    from bad_inputs import FAULTS
    out += ["", "## Faults during a run", "",
            "What the `jaxbp` command says when something goes wrong while a run goes on; the test that causes",
            "each matches the message against its pattern (`tests/bad_inputs.py`, `FAULTS`). Nothing saved is lost",
            "in any of them: the newest checkpoint that verifies is the one named.", "",
            "| case | when | message (an example) |", "|---|---|---|"]
    out += [f"| {n} | {escape(when)} | {escape(example)} |" for n, (when, _, example) in FAULTS.items()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import jax
    jax.config.update("jax_enable_x64", True)
    path = os.path.join(ROOT, "docs", "errors.md")
    text = table()
    if "--check" in sys.argv:
        sys.exit(0 if open(path).read() == text else 1)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
