"""The application layer: the typer CLI (commands only), the demo, terminal reports and progress bars."""
