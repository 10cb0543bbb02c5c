# The two commands: `make demo` and `make test`. Everything installs into a local .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgegen-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[build,ort,openvino,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out out

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train]'
	$(PY) tools/export_bench_models.py --out bench/models
	$(PY) tools/bench.py --out bench
	$(PY) tools/bench_quant.py --out bench --models bench/models
	$(PY) tools/bench_prune.py --out bench
	$(PY) tools/bench_tflite.py --out bench --models-dir bench/models
	$(PY) tools/bench_runtime.py --out bench
	$(PY) tools/bench_fpga.py --out bench
	$(PY) tools/bench_bitstream.py --out bench
	$(PY) tools/bench_emulate.py --out bench
	$(PY) tools/bench_ray.py --out bench

clean:
	rm -rf out .pytest_cache
