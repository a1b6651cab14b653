import sys, json, time, torch
from volscore.run import Run
from volscore.sampling.settings import SamplerSettings
from volscore.generate import sample_run_tensor, run_sigmas
from volscore.metrics.volumes import volume_sample_quality
torch.set_num_threads(1)
run = Run.load(sys.argv[1])
specs = [dict(sampler="heun", steps=18), dict(sampler="edm", steps=18), dict(sampler="annealed", steps=12, n_steps_each=3, step_lr_scale=3.0),
         dict(sampler="dpm", steps=35), dict(sampler="heun", steps=40), dict(sampler="annealed", steps=27, n_steps_each=3, step_lr_scale=3.0)]
for spec in specs:
    s = SamplerSettings(**spec); t0 = time.perf_counter()
    x = sample_run_tensor(run, s, n=1, seed=0, progress=False)[0, 0]
    q = volume_sample_quality(x.numpy(), run.training_volume())
    print(json.dumps({**spec, "nfe": s.network_evaluations(len(run_sigmas(run, s))), "s": round(time.perf_counter()-t0), **{k: round(q[k],4) for k in ("ssim","noise_ratio","histogram_distance")}}), flush=True)
