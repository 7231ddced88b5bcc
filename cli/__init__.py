"""The `rfpp` command line (Typer): argument parsing only; the work lives in the rfpp package."""
