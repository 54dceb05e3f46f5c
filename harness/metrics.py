"""Metric, sample and series names: one module that the worker, tracking, reports and benchmarks import.

Units are in the names (``_s``, ``_ms``, ``_mb``, ``_per_s``). Standard library only (worker side).
"""

from __future__ import annotations

# throughput and timing (every trial)
THROUGHPUT = "throughput_samples_per_s"
# a cell (K processes): 95% interval between processes (hierarchical bootstrap), and their spread
THROUGHPUT_CI_LOW = "throughput_ci_low"
THROUGHPUT_CI_HIGH = "throughput_ci_high"
THROUGHPUT_CV_BETWEEN = "throughput_cv_between"
REPEATS = "repeats"  # processes the cell's figures come from
# one process: bootstrap over its own timing windows (within-process jitter only, not run-to-run spread)
THROUGHPUT_WITHIN_CI_LOW = "throughput_within_process_ci_low"
THROUGHPUT_WITHIN_CI_HIGH = "throughput_within_process_ci_high"
STEP_TIME_CV = "step_time_cv"  # within one process, across its windows
TIMED_STEPS = "timed_steps"
WINDOW_STEPS = "window_steps"  # steps per timed window (calibrated: a window lasts at least min_window_s)
COMPILE_S = "compile_s"  # first call of the timed scenario: tracing, compilation, autotuning
COMPILE_S_SINGLE_STREAM = "compile_s_single_stream"
IMPORT_S = "import_s"  # the framework's import, in the worker
WORKER_START_S = "worker_start_s"  # launcher start to the worker's first line of work (interpreter start-up)
# per request (infer: single stream, one request per clock read) or, for train, the step time of each
# timed window (a window's mean over its window_steps steps); ``_p50`` ... ``_p99``
LATENCY = "latency_ms"
BATCH_LATENCY = "batch_latency_ms"  # infer: per offline batch
PERCENTILES = (50, 90, 95, 99)

# serve mode (infer_server, harness.worker.server): Poisson single-sample requests, dynamic batching
SERVER_LATENCY = "server_latency_ms"  # per request at the target rate, arrival to completion (queueing included)
SERVER_RATE = "server_rate_qps"  # the target (offered) request rate
SERVER_ACHIEVED_RATE = "server_achieved_rate_qps"  # requests completed per second at the target rate
SERVER_MEAN_BATCH = "server_mean_batch_size"  # requests per dynamic batch at the target rate
SERVER_MAX_RATE = "server_max_rate_qps"  # highest probed rate whose p99 met the bound (absent: none did)
SERVER_MAX_RATE_LOWER_BOUND = "server_max_rate_is_lower_bound"  # 1: every rate tried met the bound
SERVER_P99_BOUND = "server_p99_bound_ms"
SERVER_CAPACITY = "server_capacity_qps"  # batch_size / latency of one full batch (where the search starts)
SERVER_SINGLE_REQUEST = "server_single_request_ms"  # one request alone (bucket 1): the default bound's unit
SERVER_PROBES = "server_probes"  # probes of the search
SERVER_PROBE_REQUESTS = "server_probe_requests"  # requests per probe
SERVER_BUCKETS = "server_buckets"  # padded batch sizes, each compiled before anything is timed
# history (one point per probe of the search, step = probe number): its rate and p99
SERVER_PROBE_RATE = "server_probe_rate_qps"
SERVER_PROBE_P99 = "server_probe_p99_ms"

# model and machine
PARAM_COUNT = "param_count"
FLOPS_PER_SAMPLE = "flops_per_sample"
ACHIEVED_GFLOPS = "achieved_gflops"
NODE_PEAK_GFLOPS = "node_peak_gflops"
PEAK_FRACTION = "peak_fraction"

# multi-worker (data-parallel) trials: throughput above is global (all workers' samples per second)
WORKERS = "workers"
COMM_S_PER_STEP = "comm_s_per_step"  # gradient all-reduce, mean per step (where the framework lets it be timed)
SCALING_EFFICIENCY = "scaling_efficiency"  # throughput / (workers x the batch's 1-worker cell of the same spec)

# memory
PEAK_HOST_RSS_MB = "peak_host_rss_mb"
HOST_MEM_DELTA_MB = "host_mem_delta_mb"
PEAK_DEVICE_MEM_MB = "peak_device_mem_mb"  # the framework's own counter (torch.cuda, memory_stats(), TF)
PEAK_DEVICE_MEM_NVML_MB = "peak_device_mem_nvml_mb"  # this process on its GPUs, sampled from NVML
PEAK_GROUP_RSS_MB = "peak_group_rss_mb"  # the worker's whole process group, sampled by the memory cap

# energy over the timed part of the throughput scenario (NVML on GPU trials, RAPL packages on CPU trials)
ENERGY_J_PER_SAMPLE = "energy_j_per_sample"
POWER_W = "power_w"  # mean over the timed part

# training to accuracy
TRAIN_ACCURACY = "train_accuracy"
VAL_ACCURACY = "val_accuracy"
VAL_LOSS = "val_loss"
TRAIN_VAL_GAP = "train_val_gap"
FINAL_LOSS = "final_loss"
TRAIN_STEPS = "train_steps"
TRAIN_TIME_S = "train_time_s"
EVALUATIONS = "evaluations"
TARGET_ACCURACY = "target_accuracy"
TIME_TO_TARGET_S = "time_to_target_s"
STEPS_TO_TARGET = "steps_to_target"
REACHED_TARGET_FRACTION = "reached_target_fraction"  # of a cell's processes, when not all reached it

# history series (step metrics in MLflow)
LOSS = "loss"  # every training step
EVAL_SERIES = (VAL_LOSS, VAL_ACCURACY, TRAIN_ACCURACY)  # at each evaluation

# raw samples (seconds)
TRAIN_WINDOW_S = "train_window_s"
OFFLINE_WINDOW_S = "offline_window_s"
SINGLE_STREAM_REQUEST_S = "single_stream_request_s"
SERVER_REQUEST_S = "server_request_s"  # each request's latency at the target rate


def percentile_keys(prefix: str) -> dict[int, str]:
    """``{50: "latency_ms_p50", ...}`` for a latency prefix."""
    return {q: f"{prefix}_p{q}" for q in PERCENTILES}


# the task of a training run (TrainSpec: train_fraction, classes, pretraining) and what it showed
TRAIN_SAMPLES = "train_samples"  # training samples kept (train_fraction of the task's training split)
PRETRAIN_VAL_ACCURACY = "pretrain_val_accuracy"  # on the pretraining classes' held-out samples, before the reset
# input-gradient saliency on the held-out samples against the data set's informative positions (val_mask)
SALIENCY_AUC = "saliency_auc"  # P(an informative position outranks an uninformative one); 0.5: chance
SALIENCY_MASS = "saliency_mass"  # share of the saliency on informative positions ...
SALIENCY_CHANCE_MASS = "saliency_chance_mass"  # ... and the share of positions that are informative
