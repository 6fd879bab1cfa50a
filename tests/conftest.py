"""Test tiers. `make test` (CI) runs everything; `make test-fast` (`-m "not slow"`) leaves out the
tests marked `slow`: those with `@pytest.mark.slow` and those listed here, chosen from the
measured durations (`pytest --durations=0`): each took 5 s or more with both cores busy (full
trainings, the toy study, real sweeps, subprocess signal tests, fitting checks), unless it is the
one test of its kind (a smoke training end to end, one agent's update, the critic target). A name without
`[...]` marks every parametrisation, including ones added later (a new agent's cases); FAST
keeps a few of those in the fast tier."""

import os
import shutil
import tempfile

import pytest

SLOW = (
    "test_agents.py::test_every_agent_updates_every_network_and_acts_in_bounds",
    "test_agents.py::test_qc_mfql_alpha_is_not_inert",
    "test_agents.py::test_dsrl_latent_critic_tracks_the_action_critic_on_random_latents",
    "test_agents.py::test_base_loss_weight_alpha_is_inert_under_adam",
    "test_agents.py::test_cfgrl_with_zero_guidance_is_the_unconditional_sampler",
    "test_agents.py::test_cfgrl_labels_split_by_advantage_and_drop_to_null",
    "test_agents.py::test_qc_fql_actor_loss_moves_only_the_one_step_actor",
    "test_agents.py::test_dsrl_losses_each_move_only_their_own_network",
    "test_agents.py::test_qc_fql_alpha_trades_distillation_against_q",
    "test_agents.py::test_lps_update_raises_the_critics_value_of_the_decoded_chunk",
    "test_parity.py::test_the_gpu_lease_rehearses_on_the_cpu_within_what_a_lease_brings_back",
    "test_agents.py::test_bc_fm_samples_fit_a_2d_mixture",
    "test_agents.py::test_meanflow_error_reduce_mean_is_the_sum_over_d",
    "test_agents.py::test_qc_bon_acts_with_the_critics_best_candidate",
    "test_algorithms.py::test_bc_mf_one_step_decode_fits_a_2d_mixture",
    "test_algorithms.py::test_meanflow_jvp_matches_finite_difference",
    "test_algorithms.py::test_meanflow_target_formula_and_r0_reduction",
    "test_bad_input.py::test_disk_full_during_a_checkpoint_keeps_the_previous_one",
    "test_data.py::test_sharded_generation_independent_of_workers",
    "test_end_to_end.py::test_resume_after_a_kill_continues_bitwise",
    "test_end_to_end.py::test_cli_smoke_run_writes_a_complete_run_directory[lps]",
    "test_end_to_end.py::test_every_baseline_trains_and_evaluates_from_the_cli",
    "test_end_to_end.py::test_worker_pool_matches_in_process_envs",
    "test_end_to_end.py::test_a_worker_whose_pool_vanished_ends_quietly",
    "test_run_lifecycle.py::test_a_real_divergence_is_caught",
    "test_run_lifecycle.py::test_an_interrupt_during_an_evaluation_is_resumed_with_that_evaluation",
    "test_run_lifecycle.py::test_resume_with_more_steps_extends_the_run_and_says_so",
    "test_run_lifecycle.py::test_a_smoke_run_from_nothing_makes_its_own_tiny_dataset",
    "test_run_lifecycle.py::test_steps_per_second_leaves_out_compilation",
    "test_sweep.py::test_real_sweep_then_skip_then_resume",
    "test_parity.py::test_the_study_runs_its_entries_through_the_sweep_runner",
    "test_online.py::test_the_online_study_runs_its_units_through_the_sweep_runner",
    "test_toy.py::test_cli_writes_both_figures_and_the_numbers",
    "test_toy.py::test_lps_stays_in_the_data_and_beats_behaviour_cloning",
    "test_toy.py::test_regularised_method_leaves_the_data_at_small_alpha_and_collapses_to_bc_at_large",
    "test_toy.py::test_distilled_latent_critic_gradients_point_elsewhere",
    "test_qpilots.py::test_mfm_posterior_gradient_matches_finite_differences_with_statistics_held",
    "test_qpilots.py::test_alpha_zero_is_the_base_sampler_bit_for_bit",
    "test_qpilots.py::test_unsteered_targets_value_the_base_policy",
    "test_qpilots.py::test_each_loss_reaches_only_its_own_network",
    "test_qpilots.py::test_a_frozen_base_stays_bitwise_unchanged_under_training",
    "test_qpilots.py::test_gradient_clipping_bounds_the_joint_step",
    "test_qpilots.py::test_the_mfm_samples_the_closed_form_posterior",
    "test_qpilots.py::test_the_mfm_steering_gradient_points_along_the_exact_tilt_gradient",
    "test_qpilots.py::test_steering_a_frozen_bc_fm_run_from_the_cli",
    "test_robot_data.py::test_training_on_an_imported_dataset_stores_its_normalisation_and_reward_mode",
    "test_robot_data.py::test_an_imported_run_evaluates_in_the_env_with_its_normalisation",
    "test_dit.py::test_dit_starts_at_zero_and_learns_to_use_state_time_and_every_position",
    "test_online.py::test_offline_then_online_in_one_run_and_a_killed_online_run_resumes_to_the_same_end",
    "test_images.py::test_packed_rows_round_trip_exactly_and_frames_stay_uint8_up_to_the_encoder",
    "test_images.py::test_each_network_has_its_encoder_or_one_shared_set_of_weights",
    "test_images.py::test_robomimic_images_train_from_the_cli_and_the_loaded_policy_acts_on_raw_frames",
    "test_images.py::test_a_rendered_visual_dataset_holds_the_frames_of_its_states",
    "test_teleop_demos.py::test_the_cube_oracle_hook_changes_nothing_without_artifacts",
)
# kept in the fast tier although their function is listed above: the flagship (bc-mf trains in
# test_end_to_end's fast smoke run)
FAST = (
    "test_agents.py::test_every_agent_updates_every_network_and_acts_in_bounds[lps]",
)


# the longest files first (measured with `--durations`), so that the workers of `make test` (a file
# at a time each, `--dist loadfile --no-loadscope-reorder`) finish together instead of one running
# a long file last
LONG_FIRST = ("test_toy.py", "test_sweep_backends.py", "test_agents.py", "test_qpilots.py", "test_end_to_end.py",
              "test_images.py", "test_run_lifecycle.py", "test_parity.py", "test_multitask.py", "test_algorithms.py",
              "test_user_env.py", "test_sweep.py", "test_online.py", "test_export.py", "test_bad_input.py",
              "test_live_tracking.py", "test_dit.py", "test_speed_harness.py", "test_chunks.py")


def _is_slow(nodeid: str) -> bool:
    name = nodeid.rsplit("/", 1)[-1]
    return name not in FAST and any(name == s or (("[" not in s) and name.split("[", 1)[0] == s) for s in SLOW)


def _file_rank(item) -> int:
    name = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_file_rank)  # stable: a file's own order is kept


_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
    """One JAX compilation cache for the whole test run, shared by `make test`'s xdist workers (they
    inherit the controller's environment) and the training processes their tests start: a program
    compiled once (an agent's update at the smoke size) loads from it in every later test, whichever
    worker runs it. A size limit turns on JAX's file lock around each read and write, so that no
    process reads an entry another is still writing. Only programs that took 0.2 s or more to
    compile are stored: with every program stored, each eager operation of a test wrote its own entry
    under the lock, and the eager-heavy test_agents.py and test_end_to_end.py took 1285 s in a
    serial full run, against 706 s run alone with a 1 s threshold (787 s with no cache). At 0.2 s a
    fresh training process also loads its slower eager programs (random initialisers, ~1 s each),
    and a serial full run took 3723 s against 3999 s at 1 s, with files that start processes
    gaining most (test_bad_input.py 152 → 106 s).
    STEERFLOW_TEST_JAX_CACHE=0 turns it off; a JAX_COMPILATION_CACHE_DIR set by the user is kept."""
    if os.environ.get("STEERFLOW_TEST_JAX_CACHE", "1") == "0":
        return
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the user's, or this run's controller's (a worker)
        return
    cache = tempfile.mkdtemp(prefix="steerflow-test-jax-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_COMPILATION_CACHE_MAX_SIZE=str(16 * 2**30),
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")
    config.stash[_CACHE] = cache


def pytest_unconfigure(config):
    cache = config.stash.get(_CACHE, None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)



@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A fresh dataset cache (STEERFLOW_DATA) per test module: tiny datasets are generated there."""
    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("STEERFLOW_DATA", str(root))
    yield root
    mp.undo()
