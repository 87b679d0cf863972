"""Synthetic data generation: LAB's skills, grounded-skills and knowledge pipelines, filters, mixes.

Entry points: `labalign.sdg.generate.generate` (the library API) and `labalign.sdg.pipeline`
(declarative pipelines).
"""
