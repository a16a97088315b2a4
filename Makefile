# mgmt_nb developer commands. `make demo` and `make test` each set up .venv first.
PYTHON ?= python3
export TF_CPP_MIN_LOG_LEVEL ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Demo size: a 3D ResNet18 at 64x64x32 finishes on 2 CPU cores in a few minutes. The thesis size is
# 256x256x64 with efficientnetb1 on a GPU. The demo trains from scratch for at most 20 epochs, so it
# uses Adam 3e-4 instead of the thesis' 1e-4, and early stopping waits 5 epochs instead of 3 because
# the validation loss of 24 patients is noisy. DEMO_EXTRA adds papermill parameters, for example
# DEMO_EXTRA="-p phantom_signal 0" for the no-signal control.
DEMO_PARAMS := -p arch resnet18 -p image_size 64 -p depth 32 -p epochs 20 -p patience 5 -p learning_rate 3e-4 -p batch_size 8 -p run_name demo -p output_dir runs

# The sweep trains 3 architectures on 4 sequences plus the all-sequence model (15 runs) on the same
# phantom cohort with the demo's recipe at 48x48x24, for up to 20 epochs with early stopping after 8
# without a lower validation loss, then writes runs/sweep/results.md and forest.png. A resnet18 run
# took 3.5 to 9 minutes on 2 shared CPU cores, so expect one to two hours. It resumes when started again. densenet121 needs 32 voxels along every axis, so it needs
# -p depth 32. SWEEP_EXTRA adds options, for example
# SWEEP_EXTRA="--permutation", or SWEEP_EXTRA="-p phantom_signal 0 --output runs/sweep_nosignal"
# (a later --output replaces the first, and a sweep rejects a folder trained with other parameters).
SWEEP_ARGS := --archs resnet18 resnet34 efficientnetb1 --seqs FLAIR T1w T1wCE T2w --all --workers 1 --output runs/sweep -p image_size 48 -p depth 24 -p epochs 20 -p patience 8 -p learning_rate 3e-4 -p batch_size 8

.PHONY: setup demo sweep test export clean docs

setup: $(STAMP)

$(STAMP): settings.ini setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mgmt_nb)"
	$(BIN)/pip check
	touch $(STAMP)

demo: setup
	rm -rf runs/demo
	mkdir -p runs/demo
	$(BIN)/papermill nbs/05_train.ipynb runs/demo/05_train.ipynb $(DEMO_PARAMS) $(DEMO_EXTRA) --log-output --no-progress-bar
	$(BIN)/mgmt_nb_summary runs/demo

sweep: setup
	$(BIN)/python -m mgmt_nb.sweep $(SWEEP_ARGS) $(SWEEP_EXTRA)

# nbdev_test skips nbs/05_train.ipynb: tests/ runs it with papermill from the command line, as users
# run it, and papermill executes its test cells too. --timing prints each notebook's duration.
test: setup
	$(BIN)/nbdev_export
	@if [ -n "$$CI" ]; then git diff --exit-code --stat -- mgmt_nb || { echo "mgmt_nb/ differs from nbs/: run nbdev_export and commit the modules."; exit 1; }; fi
	$(BIN)/nbdev_test --n_workers 2 --do_print --timing --skip_file_re '^([_.]|05_train)'
	$(BIN)/pytest -q tests

export:
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

docs: setup
	@command -v quarto >/dev/null 2>&1 || { echo "quarto not found on PATH: install Quarto from https://quarto.org/docs/get-started/ and run 'make docs' again. mgmt_nb never downloads it."; exit 1; }
	$(BIN)/nbdev_docs

clean:
	rm -rf runs _docs _proc build dist *.egg-info
