"""Install hints for the optional model libraries, shared by the resolver and the backends."""

LLAMA_CPP_HINT = "pip install llama-cpp-python (it compiles llama.cpp: about 10 minutes on 2 cores)"
