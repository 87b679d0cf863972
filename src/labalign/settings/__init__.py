"""Each stage's settings section (pydantic, no heavy imports), on the ground floor so that every layer
can read them; `labalign.config` assembles them into one `Settings`."""
