"""The run folder: its layout, its atomic files, its lock, its settings file and history.csv.

The lowest stage: every other one reads and writes a run folder through these,
and nothing here imports another stage.

    run_paths   every file and folder of a run, named in one place (`RunPaths`)
    run_folder  atomic writes, modes, scratch folders, a full disk said in one line
    run_lock    one process per run folder
    settings    RUN/config.json: `save`, `load`, `settings_sha256`, the resume checks
    history     RUN/history.csv: its one reader and writer
"""

__all__ = ["history", "run_folder", "run_lock", "run_paths", "settings"]
