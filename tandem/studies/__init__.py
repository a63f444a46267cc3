"""Alignment studies, one command each (`tandem study NAME [CONFIG] [key=value ...]`).

Each study is a module `tandem.studies.<name>` with `run(cfg: Config, out_dir: Path) -> dict`: it
trains what it compares (an SFT model and a reward model once, then its PPO or DPO arms), evaluates
every policy on the same held-out prompts, and writes its table (`table.json`, printed) and PNG
plots into `out_dir`. `tandem.studies.common` holds the steps they share.
"""

#: The studies `tandem study` runs; each is a module of this package.
STUDIES = ("length", "overoptimization", "frontier")
