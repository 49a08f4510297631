"""One module per command; importing a module registers its command on :data:`volseg.app.base.app`."""
