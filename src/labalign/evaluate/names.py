"""The evaluations by name, in the order `evaluate all` and `labalign run` run them: MT-Bench before
forgetting, which reports the MT-Bench delta next to perplexity; open book after branch, whose
closed-book answers it reads back from the request cache. No imports: profiles and the CLI read it."""

EVALUATIONS = ("branch", "mt-bench", "forgetting", "general-knowledge", "mmlu-branch", "open-book", "mmlu")
