"""fargpu code generator: reads the CUDA 13.0 driver headers with libclang plus `annotations.toml`, and writes
the stub's exported wrappers, the server's dispatch, the op ids (C and Python) and the cuGetProcAddress table.
Run `python -m codegen` from the repository root; `python -m codegen --check` fails when outputs are stale."""
