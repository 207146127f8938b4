"""avss run: the whole pipeline into one artifact folder (config, resumable stages, search)."""
