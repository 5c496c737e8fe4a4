# Two entry points for a fresh machine: `make demo` and `make test` (`make docs` builds the site).
# Both create .venv once and reuse it (the stamp file records a finished install).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attnviz-installed

CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint install clean mutation mutation-sample docs notebooks

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attnviz demo

lint: $(STAMP)
	$(BIN)/ruff check attnviz tests benchmarks docs/conf.py docs/_ext docs/gallery_src docs/execute_notebooks.py
	$(BIN)/ruff format --check attnviz tests benchmarks docs/conf.py docs/_ext docs/gallery_src docs/execute_notebooks.py

# the browser tests (tests/test_browser.py) drive Debian's chromium through playwright
$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

test: lint $(CHROMIUM)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# The documentation site (docs/, Sphinx): offline, warnings are errors; the gallery scripts run
# on the bundled models. Open build/docs/html/index.html. tests/test_docs.py builds it too.
DOCS_OUT ?= build/docs/html
docs: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m sphinx -W --keep-going -b html docs $(DOCS_OUT)
	@echo "docs: $(DOCS_OUT)/index.html"

# Re-execute the notebooks in place (their committed outputs must be the current code's: the
# notebook tests compare them with a fresh run). NOTEBOOKS=name picks some.
notebooks: $(STAMP)
	$(BIN)/python docs/execute_notebooks.py $(NOTEBOOKS)

clean:
	rm -rf $(VENV) attnviz-out .pytest_cache build/docs docs/gallery

# Mutation testing (not part of `make test`; see TESTING.md). Every module of the package gets
# mutants (pyproject.toml [tool.mutmut], about 41,000). `make mutation-sample` runs a seeded
# random sample of MUTATION_SAMPLE mutants per area and prints the score per area;
# `make mutation` runs all of them (days on 2 cores; mutmut keeps verdicts in mutants/, so it
# resumes), or only the functions of MUTANTS, e.g. MUTANTS="'attnviz.data.views.*'".
MUTMUT_VERSION := 3.8.1
MUTATION_JOBS ?= 2
MUTATION_SAMPLE ?= 40
MUTANTS ?=
# The functions of the first, complete runs (TESTING.md, "Core functions, every mutant"):
# make mutation MUTANTS="$(MUTANTS_CORE)"
MUTANTS_CORE := \
	'attnviz.capture.core.x__to_cache_tensor__*' 'attnviz.capture.core.x__query_rows__*' \
	'attnviz.capture.core.x__validated_queries__*' 'attnviz.capture.core.x__cell_coordinate__*' \
	'attnviz.capture.core.x__check_unchanged__*' 'attnviz.capture.core.x__joined__*' \
	'attnviz.capture.core.x*Capture*_record__*' 'attnviz.capture.core.x*Capture*_tap_hook__*' \
	'attnviz.capture.core.x*_CallMode*__torch_function____*' \
	'attnviz.capture.core.x*AttentionCache*__getitem____*' \
	'attnviz.analysis.stats.x_mean_pairwise_cosine__*' 'attnviz.analysis.stats.x_avg_cosine_distance__*' \
	'attnviz.analysis.stats.x_row_entropy__*' 'attnviz.analysis.stats.x_is_distribution__*' \
	'attnviz.analysis.stats.x__neg_sum_xlogx__*' 'attnviz.analysis.stats.x_avg_jsd__*' \
	'attnviz.analysis.stats.x_entropy_stats__*' 'attnviz.analysis.stats.x_pair_jsd__*' \
	'attnviz.analysis.stats.x_row_degeneracy__*' \
	'attnviz.analysis.excitation.x_specificity_of__*' 'attnviz.analysis.excitation.x_permutation_specificity__*' \
	'attnviz.analysis.excitation.x_null_summary__*' 'attnviz.analysis.excitation.x__mean_std__*' \
	'attnviz.analysis.excitation.x*ExcitationProfileResult*specificity_chance__*' \
	'attnviz.analysis.excitation.x*SiteExcitation*controls__*' \
	'attnviz.analysis.excitation.x*ExcitationProfileResult*_payload__*' \
	'attnviz.analysis.excitation.x*ExcitationProfileResult*_restore__*' \
	'attnviz.analysis.scale_sweep.x__sample_std__*' 'attnviz.analysis.scale_sweep.x__mean_se__*' \
	'attnviz.analysis.scale_sweep.x*ScaleSweepResult*_payload__*' \
	'attnviz.data.views.*' \
	'attnviz.results.x*Result*save__*' 'attnviz.results.x*Result*load__*' \
	'attnviz.results.x_atomic_write__*' 'attnviz.results.x__files_of_earlier_save__*' \
	'attnviz.results.x_read_manifest__*' 'attnviz.results.x__write_npz__*' \
	'attnviz.analysis.query_maps.x_pixel_to_cell__*' 'attnviz.analysis.query_maps.x_cell_centre__*' \
	'attnviz.analysis.query_maps.x*QueryMaps*capture_options__*' \
	'attnviz.analysis.query_maps.x*QueryMapsResult*_payload__*' \
	'attnviz.analysis.query_maps.x*QueryMapsResult*_restore__*' \
	'attnviz.data.preprocess.*' 'attnviz.data.sources.*' 'attnviz.plot._style.*'

mutation: $(STAMP)
	$(BIN)/python -m pip install -qq --disable-pip-version-check mutmut==$(MUTMUT_VERSION)
	mkdir -p mutants && { [ -d mutants/assets ] || cp -r assets mutants/assets; }  # a mutant may write models
	ATTNVIZ_ASSETS=$(CURDIR)/mutants/assets nice -n 10 $(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(BIN)/mutmut results

mutation-sample: $(STAMP)
	$(BIN)/python -m pip install -qq --disable-pip-version-check mutmut==$(MUTMUT_VERSION)
	$(BIN)/python tools/mutation_sample.py run --per-area $(MUTATION_SAMPLE) --jobs $(MUTATION_JOBS)
	$(BIN)/python tools/mutation_sample.py report --per-area $(MUTATION_SAMPLE)

