"""What keeps a run safe and its outputs whole: checkpoints and resume (`checkpoints`), the lock of `output_dir`
(`lock`), SIGTERM/SIGINT (`signals`), atomic writes (`atomic_write`), full disks (`disk_space`), the non-finite
gradient guard (`nonfinite_guard`), the run's CSV logs (`logs`, `csv_writer`), the final save and its model card
(`final_model`, `model_card`), and processes: threads per process (`cpu_threads`), the process group
(`process_group`, `main_process_first`)."""
