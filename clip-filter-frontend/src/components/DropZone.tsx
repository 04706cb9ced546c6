import { useEffect, useId, useRef, useState, type DragEvent, type KeyboardEvent, type ReactNode } from 'react'
import { fileMatchesAccept, filesFromDataTransfer, filesFromList } from '../lib/files'

interface DropZoneProps {
  /** Accessible name of the zone (a button that opens the file picker). */
  label: string
  /** Accessible name of the file input. */
  inputLabel: string
  accept?: string
  multiple?: boolean
  disabled?: boolean
  compact?: boolean
  testId?: string
  onFiles: (files: File[]) => void
  /** Called with the files that did not match `accept`. */
  onRejected?: (files: File[]) => void
  children?: ReactNode
}

/**
 * A drop target that is also a keyboard-accessible button: click, Enter or Space opens a real
 * <input type="file">; dropping files on it does the same as picking them.
 */
export function DropZone({
  label,
  inputLabel,
  accept,
  multiple = true,
  disabled = false,
  compact = false,
  testId,
  onFiles,
  onRejected,
  children,
}: DropZoneProps) {
  const inputRef = useRef<HTMLInputElement>(null)
  const [dragging, setDragging] = useState(false)
  const depth = useRef(0)
  const inputId = useId()

  useEffect(() => {
    if (disabled) {
      depth.current = 0
      setDragging(false)
    }
  }, [disabled])

  function deliver(files: File[]) {
    const accepted = files.filter((f) => fileMatchesAccept(f, accept))
    const rejected = files.filter((f) => !fileMatchesAccept(f, accept))
    const chosen = multiple ? accepted : accepted.slice(0, 1)
    if (rejected.length > 0) onRejected?.(rejected)
    if (chosen.length > 0) onFiles(chosen)
  }

  function openPicker() {
    if (!disabled) inputRef.current?.click()
  }

  function onKeyDown(e: KeyboardEvent<HTMLDivElement>) {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault()
      openPicker()
    }
  }

  function onDragEnter(e: DragEvent<HTMLDivElement>) {
    e.preventDefault()
    if (disabled) return
    depth.current += 1
    setDragging(true)
  }

  function onDragOver(e: DragEvent<HTMLDivElement>) {
    e.preventDefault()
    if (e.dataTransfer) e.dataTransfer.dropEffect = disabled ? 'none' : 'copy'
  }

  function onDragLeave() {
    depth.current = Math.max(0, depth.current - 1)
    if (depth.current === 0) setDragging(false)
  }

  function onDrop(e: DragEvent<HTMLDivElement>) {
    e.preventDefault()
    depth.current = 0
    setDragging(false)
    if (disabled) return
    deliver(filesFromDataTransfer(e.dataTransfer))
  }

  const className = ['dropzone', dragging && 'dragging', compact && 'compact', disabled && 'disabled']
    .filter(Boolean)
    .join(' ')

  return (
    <div className="dropzone-wrap">
      <div
        className={className}
        role="button"
        tabIndex={disabled ? -1 : 0}
        aria-label={label}
        aria-disabled={disabled || undefined}
        data-testid={testId}
        onClick={openPicker}
        onKeyDown={onKeyDown}
        onDragEnter={onDragEnter}
        onDragOver={onDragOver}
        onDragLeave={onDragLeave}
        onDrop={onDrop}
      >
        <div className="dropzone-text">{children}</div>
      </div>
      {/* A real file input (outside the button: no nested controls), opened by the zone. */}
      <input
        ref={inputRef}
        id={inputId}
        className="visually-hidden"
        type="file"
        accept={accept}
        multiple={multiple}
        aria-label={inputLabel}
        tabIndex={-1}
        disabled={disabled}
        onChange={(e) => {
          deliver(filesFromList(e.currentTarget.files))
          e.currentTarget.value = '' // picking the same file again still fires change
        }}
      />
    </div>
  )
}
