"""Evaluation: did the student learn the taxonomy (branch eval), and did it forget anything?"""
