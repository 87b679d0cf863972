"""`labalign run`: validate -> generate (and mix) -> train -> evaluate -> report, in one resumable run
directory. Import-light on purpose: the CLI imports the heavy stages only when a run starts."""
