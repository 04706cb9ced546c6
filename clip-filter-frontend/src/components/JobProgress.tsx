import type { Job } from '../lib/types'

const TERMINAL = new Set(['done', 'failed', 'interrupted'])

export function isJobFinished(job: Job): boolean {
  return TERMINAL.has(job.state)
}

export function JobProgress({ job }: { job: Job }) {
  const total = Math.max(0, job.total ?? 0)
  const done = Math.max(0, Math.min(job.done ?? 0, total || (job.done ?? 0)))
  const fraction = total > 0 ? done / total : isJobFinished(job) ? 1 : 0
  const failures = job.failures ?? []
  const jobError = typeof job.error === 'string' ? job.error : job.error?.message
  return (
    <div className={`job-progress job-${job.state}`} data-testid="job-progress" data-state={job.state}>
      <div className="job-line">
        <span>
          Ingest <span className="muted">#{job.id}</span>: <strong data-testid="job-state">{job.state}</strong>
        </span>
        <span data-testid="job-count">
          {done}/{total}
        </span>
      </div>
      <div
        className="progress-track"
        role="progressbar"
        aria-label="Ingest progress"
        aria-valuemin={0}
        aria-valuemax={total}
        aria-valuenow={done}
        aria-valuetext={`${done} of ${total} files`}
      >
        <div className="progress-fill" style={{ width: `${fraction * 100}%` }} />
      </div>
      <div className="job-counts muted">
        {job.added ?? 0} added · {job.duplicates ?? 0} duplicate{job.duplicates === 1 ? '' : 's'} ·{' '}
        {job.failed ?? failures.length} failed
      </div>
      {jobError && <p className="error">{jobError}</p>}
      {failures.length > 0 && (
        <details className="job-failures" open={failures.length <= 5}>
          <summary>
            {failures.length} file{failures.length === 1 ? '' : 's'} failed
          </summary>
          <ul data-testid="job-failures">
            {failures.map((f, i) => (
              <li key={i}>
                <strong>{f.filename || '(unnamed)'}</strong>: {f.message}
                {f.code && <span className="muted"> ({f.code})</span>}
              </li>
            ))}
          </ul>
        </details>
      )}
    </div>
  )
}
