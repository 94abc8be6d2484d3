//! `armsrace sweep GRID.toml`: the flags of [`armsrace::sweep`], which does the work.

use armsrace::sweep::{self, Device, Grid, RunOptions, Shard, SlurmOptions, Status};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The grid file (out, [axes], [[step]] name/per/args; see the README's "Sweeps").
    grid: PathBuf,
    /// Run only shard INDEX/COUNT: the units of the cells c with c % COUNT == INDEX, and
    /// the shared units they need (default: from SLURM_ARRAY_TASK_ID/_COUNT or
    /// JOB_COMPLETION_INDEX; else the whole sweep).
    #[arg(long, value_name = "INDEX/COUNT")]
    shard: Option<String>,
    /// The number of shards: the array size for --slurm (default: one per cell), and the
    /// count for an index from JOB_COMPLETION_INDEX (or set ARMSRACE_SHARDS).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Run up to this many units at once, one per entry: CUDA device ids (each unit gets
    /// CUDA_VISIBLE_DEVICES=<id>) or `cpu` (e.g. 0,1,2,3 or cpu,cpu); one step at a time.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Print every unit's command line and whether it is done; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write a Slurm array script (default OUT/sweep.sbatch; --slurm=FILE for another
    /// path) and print the sbatch command; run nothing.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true)]
    slurm: Option<Option<PathBuf>>,
    /// --slurm: the job's name (default: armsrace-<grid file name>).
    #[arg(long, requires = "slurm")]
    job_name: Option<String>,
    /// --slurm: CPUs per array task.
    #[arg(long, requires = "slurm")]
    cpus_per_task: Option<usize>,
    /// --slurm: generic resources per array task, e.g. gpu:1.
    #[arg(long, requires = "slurm")]
    gres: Option<String>,
    /// --slurm: the partition.
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    /// --slurm: the time limit per array task (Slurm's format, e.g. 4:00:00).
    #[arg(long, requires = "slurm")]
    time: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let grid = Grid::load(&a.grid)?;
    let units = grid.units();
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the armsrace binary's path: {e}"))?;
    if let Some(file) = &a.slurm {
        if a.shard.is_some() || a.dry_run || a.devices.is_some() {
            anyhow::bail!(
                "--slurm writes a script and runs nothing: drop --shard, --dry-run, --devices"
            );
        }
        let out = grid.out_path();
        std::fs::create_dir_all(&out).map_err(|e| armsrace::Error::io(&out, e))?;
        let file = file.clone().unwrap_or_else(|| out.join("sweep.sbatch"));
        let stem = grid
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let opts = SlurmOptions {
            shards: a.shards.unwrap_or(grid.cells()),
            job_name: a
                .job_name
                .clone()
                .unwrap_or_else(|| format!("armsrace-{}", armsrace::files::slug(&stem))),
            cpus_per_task: a.cpus_per_task,
            gres: a.gres.clone(),
            partition: a.partition.clone(),
            time: a.time.clone(),
        };
        if opts.shards > grid.cells() {
            eprintln!(
                "note: --shards {} is more than the grid's {} cells; some tasks will have \
                 nothing to do",
                opts.shards,
                grid.cells()
            );
        }
        let script = sweep::slurm_script(&grid, &exe, &opts)?;
        armsrace::files::write_atomic(&file, script.as_bytes())?;
        println!(
            "wrote {} ({} array tasks over {} cells, {} units); submit it with:",
            file.display(),
            opts.shards,
            grid.cells(),
            units.len()
        );
        println!("  sbatch {}", sweep::shell_quote(&file.to_string_lossy()));
        return Ok(());
    }
    let flag = a.shard.as_deref().map(Shard::parse).transpose()?;
    let shard = sweep::shard_from(flag, a.shards, &|k| std::env::var(k).ok())?;
    if let Some((s, from)) = &shard {
        println!("shard {s} (from {from})");
    }
    let mine = sweep::shard_units(&units, shard.as_ref().map(|s| s.0));
    if a.dry_run {
        println!(
            "{} units of {} ({} cells); they run in {}",
            mine.len(),
            units.len(),
            grid.cells(),
            grid.root.display()
        );
        let exe_s = sweep::shell_quote(&exe.to_string_lossy());
        for u in &mine {
            let status = match u.status(&grid)? {
                Status::Done => "done",
                Status::Todo => "todo",
                Status::Changed { .. } => "refused: done with other arguments",
            };
            println!(
                "[{status}] {}: {exe_s} {}",
                u.label(),
                sweep::shell_line(&u.args)
            );
        }
        return Ok(());
    }
    let devices = match &a.devices {
        Some(s) => Device::parse_list(s)?,
        None => vec![Device::Cpu],
    };
    let opts = RunOptions {
        exe,
        devices,
        poll: Duration::from_millis(500),
    };
    let say = |line: String| println!("{line}");
    let report = sweep::run(&grid, &mine, &opts, &say)?;
    println!(
        "sweep {}: {} units: {} ran, {} skipped (already done); results under {}",
        grid.path.display(),
        mine.len(),
        report.ran,
        report.skipped,
        grid.out_path().display()
    );
    Ok(())
}
