"""Experiments: tasks, training, studies and sweeps built on the engine and the analysis.

Modules by job: :mod:`.tasks` (the memory tasks), :mod:`.readout`, :mod:`.losses`,
:mod:`.optimisers`, :mod:`.training` (the loop), :mod:`.persistence` (save and load),
:mod:`.sampling` (text from a character model), :mod:`.study` and :mod:`.meanfield` (gradient
stability), :mod:`.plotting`.  Nothing here imports matplotlib or dask at import time; figures
and distributed sweeps import them when asked for.
"""
from .losses import cross_entropy_loss, cross_entropy_loss_grad, mse_loss, mse_loss_grad
from .meanfield import meanfield_lyapunov, meanfield_q_star
from .optimisers import SGD, Adam, clip_grad_norm
from .persistence import SavedModel, load_model, save_model, to_json
from .progress import ProgressBar
from .readout import LinearReadout
from .sampling import sample_text
from .study import (STUDY_CELLS, STUDY_INITS, StudyConfig, StudyResult, check_scheduler,
                    run_study, study_point)
from .tasks import (TASKS, AddingProblem, CharLM, CopyMemory, FlipFlop, LorenzForecast, TaskBatch,
                    lorenz_trajectory, make_task)
from .training import TrainingDiverged, TrainResult, evaluate, train

__all__ = ["meanfield_lyapunov", "meanfield_q_star", "STUDY_CELLS", "STUDY_INITS",
           "StudyConfig", "StudyResult", "check_scheduler", "run_study", "study_point",
           "ProgressBar", "TASKS", "AddingProblem", "CharLM", "CopyMemory", "FlipFlop",
           "LorenzForecast", "TaskBatch", "lorenz_trajectory", "make_task", "SGD", "Adam",
           "LinearReadout", "SavedModel", "TrainResult", "TrainingDiverged", "clip_grad_norm",
           "cross_entropy_loss", "cross_entropy_loss_grad", "evaluate", "load_model", "mse_loss",
           "mse_loss_grad", "sample_text", "save_model", "to_json", "train"]
