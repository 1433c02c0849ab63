# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv/ first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
REQS := requirements/base.txt requirements/nodeps.txt requirements/test.txt requirements/hf.txt constraints.txt setup.py
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0
# XLA:CPU allocates each call's temporaries afresh (GBs for a train step); glibc then asks for
# transparent huge pages for them, which cut the CPU train step by 16% (README "Benchmarks").
export GLIBC_TUNABLES := $(if $(GLIBC_TUNABLES),$(GLIBC_TUNABLES):)glibc.malloc.hugetlb=1

.PHONY: demo test venv libtpu lock clean-venv

venv: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -r requirements/base.txt -r requirements/test.txt -r requirements/hf.txt
	$(PIP) install -q --no-deps -c constraints.txt -r requirements/nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -m flan_jax.envcheck
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flan_jax.train --gin_file=runs/demo.gin

# libtpu in its own folder, not the venv's site-packages (there jax would try the TPU backend for
# every command); flan_jax.compile's TPU-slice tests load it with PYTHONPATH=.venv/libtpu.
LIBTPU := $(VENV)/libtpu/.installed
libtpu: $(LIBTPU)

$(LIBTPU): requirements/tpu.txt | $(STAMP)
	$(PIP) install -q --no-deps --target $(VENV)/libtpu -r requirements/tpu.txt
	touch $@

test: $(STAMP) $(LIBTPU)
	$(PY) -m pytest -q tests

# Regenerate constraints.txt from a working environment (run after changing requirements/*.txt).
lock: $(STAMP)
	$(PIP) freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean-venv:
	rm -rf $(VENV)
