"""``python -m tests.engine.run_toy ARGS`` = ``hat ARGS`` with the toy plugin loaded.

Used to run the real CLI in a subprocess (SIGKILL/resume) and under torchrun (DDP).
"""

from hat.cli import main
from hat.plugins import set_host
from tests.engine.toy_task import make_host

if __name__ == "__main__":
    set_host(make_host())
    main()
