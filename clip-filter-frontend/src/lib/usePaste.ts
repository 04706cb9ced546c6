import { useEffect, useRef } from 'react'
import { filesFromDataTransfer } from './files'

/** While `active`, files pasted anywhere on the page (outside text fields) go to `onFiles`. */
export function usePasteFiles(active: boolean, onFiles: (files: File[]) => void): void {
  const handler = useRef(onFiles)
  handler.current = onFiles
  useEffect(() => {
    if (!active) return
    function onPaste(e: ClipboardEvent) {
      const files = filesFromDataTransfer(e.clipboardData)
      if (files.length === 0) return // plain text: let inputs handle it
      e.preventDefault()
      handler.current(files)
    }
    document.addEventListener('paste', onPaste)
    return () => document.removeEventListener('paste', onPaste)
  }, [active])
}
