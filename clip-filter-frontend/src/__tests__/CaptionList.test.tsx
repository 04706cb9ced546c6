import { fireEvent, render, screen, cleanup } from '@testing-library/react'
import { useState } from 'react'
import { afterEach, describe, expect, it } from 'vitest'
import { CaptionList, newCaption, type Caption } from '../components/CaptionList'

function Harness({ initial = 2 }: { initial?: number }) {
  const [captions, setCaptions] = useState<Caption[]>(() => Array.from({ length: initial }, () => newCaption()))
  return (
    <>
      <CaptionList captions={captions} onChange={setCaptions} />
      <output data-testid="values">{JSON.stringify(captions.map((c) => c.text))}</output>
    </>
  )
}

const inputs = () => screen.getAllByRole('textbox')
const values = () => JSON.parse(screen.getByTestId('values').textContent ?? '[]') as string[]

afterEach(cleanup)

describe('CaptionList', () => {
  it('starts with two labelled caption inputs', () => {
    render(<Harness />)
    expect(inputs()).toHaveLength(2)
    expect(screen.getByLabelText('Caption 1')).toBeTruthy()
    expect(screen.getByLabelText('Caption 2')).toBeTruthy()
  })

  it('adds captions with the button', () => {
    render(<Harness />)
    fireEvent.click(screen.getByRole('button', { name: /add caption/i }))
    fireEvent.click(screen.getByRole('button', { name: /add caption/i }))
    expect(inputs()).toHaveLength(4)
    expect(screen.getByLabelText('Caption 4')).toBeTruthy()
  })

  it('removes the chosen caption and keeps the others in order', () => {
    render(<Harness initial={3} />)
    fireEvent.change(screen.getByLabelText('Caption 1'), { target: { value: 'a cat' } })
    fireEvent.change(screen.getByLabelText('Caption 2'), { target: { value: 'a dog' } })
    fireEvent.change(screen.getByLabelText('Caption 3'), { target: { value: 'a car' } })
    fireEvent.click(screen.getByRole('button', { name: 'Remove caption 2' }))
    expect(inputs()).toHaveLength(2)
    expect(values()).toEqual(['a cat', 'a car'])
    expect((screen.getByLabelText('Caption 2') as HTMLInputElement).value).toBe('a car')
  })

  it('never removes the last caption', () => {
    render(<Harness initial={1} />)
    const remove = screen.getByRole('button', { name: 'Remove caption 1' }) as HTMLButtonElement
    expect(remove.disabled).toBe(true)
  })

  it('Enter in the last filled caption adds a new one', () => {
    render(<Harness />)
    fireEvent.change(screen.getByLabelText('Caption 2'), { target: { value: 'a dog' } })
    fireEvent.keyDown(screen.getByLabelText('Caption 2'), { key: 'Enter' })
    expect(inputs()).toHaveLength(3)
  })
})
