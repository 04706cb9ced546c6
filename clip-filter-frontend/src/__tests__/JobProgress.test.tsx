import { cleanup, render, screen } from '@testing-library/react'
import { afterEach, describe, expect, it } from 'vitest'
import { isJobFinished, JobProgress } from '../components/JobProgress'
import type { Job } from '../lib/types'

const base: Job = {
  id: 'j1',
  collection: 'c',
  state: 'running',
  done: 2,
  total: 5,
  added: 2,
  duplicates: 0,
  failed: 0,
  failures: [],
}

afterEach(cleanup)

describe('JobProgress', () => {
  it('renders done/total as a progress bar', () => {
    render(<JobProgress job={base} />)
    const bar = screen.getByRole('progressbar', { name: 'Ingest progress' })
    expect(bar.getAttribute('aria-valuenow')).toBe('2')
    expect(bar.getAttribute('aria-valuemax')).toBe('5')
    expect((bar.querySelector('.progress-fill') as HTMLElement).style.width).toBe('40%')
    expect(screen.getByTestId('job-count').textContent).toBe('2/5')
    expect(screen.getByTestId('job-state').textContent).toBe('running')
  })

  it('lists failures of a finished job', () => {
    const job: Job = {
      ...base,
      state: 'done',
      done: 5,
      added: 3,
      duplicates: 1,
      failed: 1,
      failures: [{ filename: 'bad.png', code: 'corrupt_image', message: 'The image data is corrupt.' }],
    }
    render(<JobProgress job={job} />)
    expect(screen.getByTestId('job-progress').getAttribute('data-state')).toBe('done')
    expect(screen.getByTestId('job-count').textContent).toBe('5/5')
    const failures = screen.getByTestId('job-failures')
    expect(failures.textContent).toContain('bad.png')
    expect(failures.textContent).toContain('The image data is corrupt.')
    expect(screen.getByText(/3 added/).textContent).toMatch(/1 duplicate\b.*1 failed/)
  })

  it('handles an empty job', () => {
    render(<JobProgress job={{ ...base, state: 'queued', done: 0, total: 0 }} />)
    const bar = screen.getByRole('progressbar')
    expect((bar.querySelector('.progress-fill') as HTMLElement).style.width).toBe('0%')
  })

  it('knows the terminal states', () => {
    expect(['queued', 'running', 'done', 'failed', 'interrupted'].map((s) => isJobFinished({ ...base, state: s as Job['state'] }))).toEqual([
      false,
      false,
      true,
      true,
      true,
    ])
  })
})
