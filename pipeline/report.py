"""DVC `report` stage, the last: `eed report`, the headline numbers into
<paths.out_dir>/results.json (the DVC metrics file) and the results table on the console."""

from eed.stages import run_stage
from eed.stages.report import report

if __name__ == "__main__":
    run_stage(report)
