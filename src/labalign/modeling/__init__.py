"""Model pieces that training and evaluation both use: the chunked loss through the LM head, tokenizer
loading and model directory resolution. Below `train` and `evaluate`, so neither reaches into the other."""
