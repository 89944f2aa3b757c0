# Two entry points (see README): `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
XVFB := xvfb-run -a -s "-screen 0 1400x900x24"
# Debian packages napari needs for an OpenGL context under Xvfb (Mesa).
SYSTEM_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
	libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libdbus-1-3 \
	libfontconfig1

.PHONY: demo test test-fast lint format venv sysdeps napari clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[testing]"
	touch $@

venv: $(BIN)/.installed

sysdeps:
	@if ! command -v xvfb-run >/dev/null 2>&1 || [ ! -e /usr/lib/x86_64-linux-gnu/libxcb-cursor.so.0 -a ! -e /usr/lib/aarch64-linux-gnu/libxcb-cursor.so.0 ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

demo: venv
	$(BIN)/napari-clumps demo --out demo_output

napari: venv sysdeps
	$(BIN)/napari

# Lint and format checks (ruff, configured in pyproject.toml) come first: the suite runs on clean code.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint sysdeps
	$(XVFB) $(BIN)/python -m pytest --cov=napari_clumps --cov-report=term

# Everything but the tests marked slow (training, many detections): a few minutes.
test-fast: venv sysdeps
	$(XVFB) $(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) demo_output .pytest_cache .coverage
