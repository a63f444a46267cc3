"""Alignment studies, one command each (`tandem study NAME [CONFIG] [key=value ...]`).

Each study is a module `tandem.studies.<name>` with `run(cfg: Config, out_dir: Path) -> dict`: it
trains what it compares (an SFT model and a reward model once, then its PPO or DPO arms), evaluates
every policy on the same held-out prompts, and writes its table (`table.json`, printed) and PNG
plots into `out_dir`. `tandem.studies.common` holds the steps they share. A new module here is a new
study: the command line lists the modules it finds.
"""

import pkgutil

#: The studies `tandem study` runs: every module of this package but the shared steps.
STUDIES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "common"))
