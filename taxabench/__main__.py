from taxabench.cli import cli

cli()
