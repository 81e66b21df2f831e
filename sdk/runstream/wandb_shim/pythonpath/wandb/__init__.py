"""``wandb`` as found on ``PYTHONPATH`` when runstream's W&B shim is switched on for a process tree
(``runstream as-wandb ...``; docs/wandb-shim.md): importing it installs the shim, and the import
statement then gets the shim's ``wandb`` module, a proxy over ``runstream``, in place of this one.
"""

if __name__ == "wandb":  # not when a tool walks runstream's own package tree
    try:
        from runstream.wandb_shim import install
    except ImportError as e:
        import sys

        raise ImportError(
            f"runstream's wandb stand-in ({__file__}) is on PYTHONPATH, but this Python "
            f"({sys.executable}) cannot import runstream: run the command with the Python "
            f"environment runstream is installed in ({e})",
            name="wandb",
        ) from e

    install()
    # install() put the shim's module in sys.modules["wandb"]; the import statement returns it.
