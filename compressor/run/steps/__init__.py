"""The declared steps of ``avss run``, one module per part of the pipeline (score, cut, verify,
export, bench); ``compressor.run.api.STEPS`` lists them and ``compressor.run.pipeline`` orders them."""
