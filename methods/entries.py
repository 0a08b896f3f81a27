"""The built-in methods, declared as a plug-in declares its own: name, "module:attribute", summary.

Torch-free (`python -m vispec_bench list` reads it without importing a method). Adding a
built-in method is its module plus one line here; a third-party package adds the same line as
an entry point in its pyproject.toml (group `vispec_bench.methods`).
"""

from vispec_bench.plugins.registry import Entry

ENTRIES = [
    Entry("ar", "methods.ar:AR", "plain autoregressive decoding: the baseline every method is timed against"),
    Entry("oracle", "methods.oracle:Oracle",
          "diagnostic: proposes AR's own continuation, the engine's ceiling for a tree depth"),
    Entry("ngram", "methods.ngram:Ngram",
          "prompt lookup: copies what followed the context's last n-gram earlier on (no draft network; HF's defaults)"),
    Entry("eagle2", "methods.eagle2:Eagle2",
          "EAGLE-2: one-layer feature draft + dynamic tree (depth/top_k/total_token as in EAGLE's code)"),
    Entry("eagle3", "methods.eagle3:Eagle3",
          "EAGLE-3: draft on fused low/mid/high target features, own reduced-vocabulary head, training-time test"),
    Entry("eaglevlm", "methods.eaglevlm:EagleVLM",
          "EagleVLM (SpecVLM's baseline): EAGLE-2 with the draft layer's input layernorm kept"),
    Entry("vispec", "methods.vispec:ViSpec",
          "ViSpec: EAGLE-2 draft + vision adaptor (compressed image tokens) + global visual feature"),
    # Ablations: the same class with options preset; `run --ablations` adds them to the method they ablate.
    Entry("vispec-noadaptor", "methods.vispec:ViSpec",
          "ViSpec ablation: image tokens enter the draft as in EAGLE-2, global feature on",
          preset={"adaptor": False}, ablation_of="vispec"),
    Entry("vispec-noglobal", "methods.vispec:ViSpec", "ViSpec ablation: adaptor splice on, no global feature",
          preset={"global_feature": False}, ablation_of="vispec"),
    Entry("specvlm", "methods.specvlm:SpecVLM",
          "SpecVLM: EagleVLM draft + elastic visual compressor (prune/pool/conv/resampler, question-conditioned gate)"),
    Entry("specvlm-prune", "methods.specvlm:SpecVLM", "SpecVLM ablation: pruning forced (first ratio), no gate",
          preset={"primitive": "prune"}, ablation_of="specvlm"),
    Entry("specvlm-pool", "methods.specvlm:SpecVLM", "SpecVLM ablation: pooling forced (first ratio), no gate",
          preset={"primitive": "pool"}, ablation_of="specvlm"),
    Entry("specvlm-conv", "methods.specvlm:SpecVLM", "SpecVLM ablation: convolution forced (first ratio), no gate",
          preset={"primitive": "conv"}, ablation_of="specvlm"),
    Entry("specvlm-resampler", "methods.specvlm:SpecVLM", "SpecVLM ablation: the 2-query resampler forced, no gate",
          preset={"primitive": "resampler"}, ablation_of="specvlm"),
    Entry("medusa", "methods.medusa:Medusa", "Medusa: K ResBlock heads on the last hidden state, fixed tree"),
    Entry("medusa-dynamic", "methods.medusa_dynamic:MedusaDynamic",
          "Medusa heads + shared lm_head + EAGLE-2's dynamic tree (the ViSpec paper's Medusa baseline)"),
]
