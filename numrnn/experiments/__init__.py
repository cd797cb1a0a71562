"""Experiments: tasks, training, studies and sweeps built on the engine and the analysis.

Nothing here imports matplotlib or dask at import time; figures and distributed sweeps import
them when asked for.
"""
from .meanfield import meanfield_lyapunov, meanfield_q_star
from .progress import ProgressBar
from .study import (STUDY_CELLS, STUDY_INITS, StudyConfig, StudyResult, check_scheduler,
                    run_study, study_point)
from .tasks import (TASKS, AddingProblem, CharLM, CopyMemory, FlipFlop, LorenzForecast, TaskBatch,
                    lorenz_trajectory, make_task)
from .training import (SGD, Adam, LinearReadout, SavedModel, TrainingDiverged, TrainResult,
                       clip_grad_norm, cross_entropy_loss, cross_entropy_loss_grad, evaluate,
                       load_model, mse_loss, mse_loss_grad, sample_text, save_model, to_json,
                       train)

__all__ = ["meanfield_lyapunov", "meanfield_q_star", "STUDY_CELLS", "STUDY_INITS",
           "StudyConfig", "StudyResult", "check_scheduler", "run_study", "study_point",
           "ProgressBar", "TASKS", "AddingProblem", "CharLM", "CopyMemory", "FlipFlop",
           "LorenzForecast", "TaskBatch", "lorenz_trajectory", "make_task", "SGD", "Adam",
           "LinearReadout", "SavedModel", "TrainResult", "TrainingDiverged", "clip_grad_norm",
           "cross_entropy_loss", "cross_entropy_loss_grad", "evaluate", "load_model", "mse_loss",
           "mse_loss_grad", "sample_text", "save_model", "to_json", "train"]
