/**
 * Render progress for a terminal: a live bar (section i/n, step j/m, ETA) on a TTY, and one plain
 * line per finished section otherwise, so CI logs stay readable.
 */
import cliProgress from "cli-progress";

export interface RenderProgress {
  start(sections: number, stepsPerSection: number): void;
  step(section: number, step: number): void;
  stage(label: string): void;
  stop(): void;
}

export function createProgress(stream: NodeJS.WriteStream = process.stderr): RenderProgress {
  let sections = 0;
  let steps = 0;
  let label = "";
  const started = Date.now();

  if (!stream.isTTY) {
    let lastSection = -1;
    return {
      start(n, m) {
        sections = n;
        steps = m;
        stream.write(`rendering ${n} section(s) x ${m} step(s)\n`);
      },
      step(section, step) {
        if (step === steps && section !== lastSection) {
          lastSection = section;
          const elapsed = (Date.now() - started) / 1000;
          const eta = (elapsed / (section + 1)) * (sections - section - 1);
          stream.write(`section ${section + 1}/${sections} done (${elapsed.toFixed(1)} s, ETA ${eta.toFixed(1)} s)\n`);
        }
      },
      stage(l) {
        stream.write(`${l}\n`);
      },
      stop() {},
    };
  }

  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: "{stage} |{bar}| section {section}/{sections} step {step}/{steps} | {percentage}% | ETA {eta_formatted}",
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 20,
    },
    cliProgress.Presets.shades_classic,
  );
  return {
    start(n, m) {
      sections = n;
      steps = m;
      bar.start(n * m, 0, { stage: label || "denoise", section: 1, sections: n, step: 0, steps: m });
    },
    step(section, step) {
      bar.update(section * steps + step, { section: section + 1, step, stage: "denoise" });
    },
    stage(l) {
      label = l;
      if (sections > 0) bar.update({ stage: l });
      else stream.write(`${l}\n`);
    },
    stop() {
      bar.stop();
    },
  };
}
