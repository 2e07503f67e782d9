;;; codestral.el --- Local ghost-text code completions from codestral-ls via Eglot  -*- lexical-binding: t; -*-

;; Copyright (C) 2026 The codestral-ls authors

;; Author: The codestral-ls authors
;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1") (eglot "1.9"))
;; Keywords: convenience, languages, tools
;; SPDX-License-Identifier: Apache-2.0

;; This file is not part of GNU Emacs.

;;; Commentary:

;; Copilot-style completions from a local fill-in-the-middle model served by
;; `codestral-ls', a Language Server Protocol server.
;;
;; Loading this file:
;;
;; * registers `codestral-ls' with Eglot (`eglot-server-programs') for the
;;   major modes in `codestral-modes', with `codestral-initialization-options'
;;   sent as the LSP initializationOptions.  Eglot's own completion support
;;   (`completion-at-point', Company, Corfu...) then shows the suggestion as a
;;   completion candidate (the server's `textDocument/completion' fallback);
;;
;; * defines `codestral-mode', a buffer-local minor mode that requests
;;   `textDocument/inlineCompletion' (LSP 3.18; Eglot 1.9 has no support for
;;   it) through the buffer's Eglot connection after a short idle delay,
;;   shows the suggestion as ghost text after point, and accepts it with TAB
;;   (`codestral-accept').  `codestral-accept-word' (M-f) takes the next word,
;;   `codestral-dismiss' (or any other command) hides it.  Accepting reports
;;   the acceptance to the server (`workspace/executeCommand'), which keeps
;;   the acceptance statistics shown by `codestral-stats'.
;;
;; Minimal setup:
;;
;;   (require 'codestral)
;;   (add-hook 'python-mode-hook #'eglot-ensure)
;;   (add-hook 'eglot-managed-mode-hook #'codestral-maybe-enable)
;;
;; Eglot talks to one server per buffer, so buffers managed by codestral-ls
;; are not managed by another language server at the same time.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'seq)
(require 'jsonrpc)
(require 'eglot)

(defgroup codestral nil
  "Local code completions from codestral-ls."
  :group 'tools
  :prefix "codestral-")

;;;; Server registration

(defcustom codestral-server-command '("codestral-ls")
  "Command line (program and arguments) that starts codestral-ls on stdio.
Give an absolute path when the program is not on the variable `exec-path',
e.g. the
`codestral-ls' script of a virtual environment."
  :type '(repeat string))

(defcustom codestral-initialization-options nil
  "Plist sent as the LSP initializationOptions when codestral-ls starts.
Keys are the server's camelCase option names, for instance
  (:device \"cuda\" :budgetMs 100
   :maxTokens 64 :multiline \"auto\" :disabledLanguages [\"markdown\"])
Use a vector for JSON arrays.  nil sends no options (server defaults).
Changes apply to servers started afterwards (\\[eglot-reconnect])."
  :type '(plist :key-type symbol :value-type sexp))

(defcustom codestral-modes
  '((tsx-ts-mode . "typescriptreact")
    (typescript-ts-mode . "typescript")
    (typescript-mode . "typescript")
    (js-ts-mode . "javascript")
    (js-mode . "javascript")
    (python-ts-mode . "python")
    (python-mode . "python")
    (go-ts-mode . "go")
    (go-mode . "go")
    (rust-ts-mode . "rust")
    (rust-mode . "rust")
    (c++-ts-mode . "cpp")
    (c++-mode . "cpp")
    (c-ts-mode . "c")
    (c-mode . "c")
    (java-ts-mode . "java")
    (java-mode . "java"))
  "Major modes whose buffers Eglot connects to codestral-ls, with LSP language ids.
Modes sharing a language id share one Eglot entry.  More specific modes come
first, since Eglot picks the first entry a mode derives from.  Setting this
through Customize re-registers the entries."
  :type '(alist :key-type (symbol :tag "Major mode") :value-type (string :tag "LSP languageId"))
  :set (lambda (symbol value)
         (set-default symbol value)
         (when (fboundp 'codestral-eglot-register)
           (codestral-eglot-register))))

(defclass codestral-lsp-server (eglot-lsp-server) ()
  :documentation "An Eglot connection to codestral-ls, started from `codestral-modes'.")

(defun codestral--eglot-contact (&optional _interactive _project)
  "Eglot contact for codestral-ls: our class, command and initializationOptions.
The class tells `eglot-client-capabilities' to opt in to codestral's
extensions whatever the program is called (a wrapper script, say)."
  (let ((command codestral-server-command))
    (unless (and (consp command) (stringp (car command)))
      (user-error "[codestral] `codestral-server-command' must be a list of strings"))
    (when (string-prefix-p "~" (car command))   ; processes do not expand ~
      (setq command (cons (expand-file-name (car command)) (cdr command))))
    (unless (or (file-name-absolute-p (car command)) (executable-find (car command)))
      (user-error "[codestral] `%s' not found; install codestral-ls or set `codestral-server-command'"
                  (car command)))
    (cons 'codestral-lsp-server
          (append command
                  (when codestral-initialization-options
                    (list :initializationOptions codestral-initialization-options))))))

(defun codestral--entry-p (entry)
  "Non-nil if ENTRY of `eglot-server-programs' is codestral's."
  (eq (cdr-safe entry) 'codestral--eglot-contact))

;;;###autoload
(defun codestral-eglot-register ()
  "Register codestral-ls with Eglot for the modes in `codestral-modes'.
The entries go in front of `eglot-server-programs'.  Idempotent: previous
codestral entries are replaced."
  (interactive)
  (let (languages)
    (dolist (pair codestral-modes)
      (let ((cell (assoc (cdr pair) languages)))
        (if cell
            (setcdr cell (append (cdr cell) (list (car pair))))
          (setq languages (append languages (list (list (cdr pair) (car pair))))))))
    (setq eglot-server-programs
          (append
           (mapcar (lambda (language)
                     (cons (mapcar (lambda (mode) (list mode :language-id (car language)))
                                   (cdr language))
                           'codestral--eglot-contact))
                   languages)
           (seq-remove #'codestral--entry-p eglot-server-programs)))))

(codestral-eglot-register)

;;;; Talking to the server

(defcustom codestral-request-timeout 30
  "Seconds to wait for an inline completion before giving up.
The first request after the server starts also waits for the model to load."
  :type 'number)

(defcustom codestral-send-accept-command t
  "If non-nil, tell the server when a suggestion is accepted.
Applies to inline suggestions and to completion candidates chosen through
`completion-at-point'; the server uses it for its acceptance statistics."
  :type 'boolean)

(defun codestral--log (format-string &rest args)
  "Log FORMAT-STRING with ARGS to *Messages* without echoing."
  (let ((inhibit-message t))
    (apply #'message (concat "[codestral] " format-string) args)))

(defun codestral--server ()
  "The live Eglot server of the current buffer, or nil."
  (let ((server (ignore-errors (eglot-current-server))))
    (and server (jsonrpc-running-p server) server)))

(defun codestral--capability (server capability)
  "SERVER's value for CAPABILITY (a keyword), nil if absent or false.
An empty options object ({}, which parses to nil) gives t."
  (let ((probe (plist-member (eglot--capabilities server) capability)))
    (and probe
         (not (eq (cadr probe) :json-false))
         (or (cadr probe) t))))

(defun codestral--server-p (server)
  "Non-nil if SERVER is codestral-ls (it declares the codestral.accept command)."
  (and server
       (let* ((provider (codestral--capability server :executeCommandProvider))
              (commands (and (listp provider) (plist-get provider :commands))))
         (seq-contains-p commands "codestral.accept"))))

(defun codestral--send-command (server command)
  "Ask SERVER to run COMMAND (an LSP Command plist), without waiting."
  (when (and codestral-send-accept-command server command (plist-get command :command)
             (jsonrpc-running-p server))
    (jsonrpc-async-request
     server :workspace/executeCommand
     (list :command (plist-get command :command)
           :arguments (or (plist-get command :arguments) []))
     :success-fn #'ignore
     :error-fn (lambda (error) (codestral--log "%s failed: %S" (plist-get command :command) error))
     :timeout-fn #'ignore)))

(defun codestral--stats (server)
  "SERVER's `codestral/stats' counters, as a plist."
  (jsonrpc-request server :codestral/stats (make-hash-table)))

(defun codestral--notify-partial (server command length)
  "Tell SERVER that LENGTH characters of COMMAND's suggestion were accepted."
  (let ((id (and command (seq-first (plist-get command :arguments)))))
    (when (and codestral-send-accept-command server id (jsonrpc-running-p server))
      (jsonrpc-notify server :codestral/didPartiallyAccept (list :id id :acceptedLength length)))))

(defun codestral--completion-exit-advice (capf)
  "Make the `eglot-completion-at-point' result CAPF report accepted items.
Eglot does not run a CompletionItem's command; for codestral-ls this sends
the item's `codestral.accept' command once the candidate is inserted."
  (let ((server (codestral--server)))
    (if (not (and codestral-send-accept-command (consp capf) (codestral--server-p server)))
        capf
      (let* ((table (nth 2 capf))
             (props (copy-sequence (nthcdr 3 capf)))
             (exit (plist-get props :exit-function)))
        (append
         (list (nth 0 capf) (nth 1 capf) table)
         (plist-put props :exit-function
                    (lambda (proxy status)
                      (let ((item (and (stringp proxy)
                                       (or (get-text-property 0 'eglot--lsp-item proxy)
                                           ;; Chosen from *Completions*: PROXY lost its properties.
                                           (let ((full (and (functionp table)
                                                            (cl-find proxy (all-completions "" table)
                                                                     :test #'string=))))
                                             (and full (get-text-property 0 'eglot--lsp-item full)))))))
                        (when exit (funcall exit proxy status))
                        (when (and item (memq status '(finished exact)))
                          (codestral--send-command server (plist-get item :command)))))))))))

(advice-add 'eglot-completion-at-point :filter-return #'codestral--completion-exit-advice)

;;;###autoload
(defun codestral-stats ()
  "Show the server's counters: suggestions, acceptance, latency, model."
  (interactive)
  (let ((server (or (codestral--server) (user-error "[codestral] no Eglot server in this buffer"))))
    (let ((stats (codestral--stats server)))
      (with-help-window "*codestral-stats*"
        (with-current-buffer standard-output
          (insert (pp-to-string stats))))
      stats)))

;;;; Inline suggestions

(defcustom codestral-idle-delay 0.25
  "Seconds of idle time after an edit before asking for a suggestion."
  :type 'number)

(defcustom codestral-auto-trigger t
  "If non-nil, ask for a suggestion automatically after edits.
Otherwise only \\[codestral-complete] asks."
  :type 'boolean)

(defcustom codestral-trigger-on-move t
  "If non-nil, also ask when point comes to rest somewhere else without an edit.
Moving into `max(|)' then shows what fits there, as typing would.  Applies
only with `codestral-auto-trigger', and never while the region is active."
  :type 'boolean)

(defface codestral-suggestion-face
  '((((class color) (min-colors 88)) :foreground "grey50")
    (t :inherit shadow))
  "Face of the ghost text.
Grey where the display has 88 colours or more, the GUI and 256-colour
terminals alike; `shadow' elsewhere.")

(defvar codestral-suggestion-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "TAB") #'codestral-accept)
    (define-key map (kbd "<tab>") #'codestral-accept)
    (define-key map (kbd "M-f") #'codestral-accept-word)
    (define-key map (kbd "C-M-f") #'codestral-accept-line)
    map)
  "Keymap active only while a suggestion is shown.")

(defvar codestral-mode-map (make-sparse-keymap)
  "Keymap of `codestral-mode'.  Bind `codestral-complete' here if you like.")

(defvar-local codestral--visible nil
  "Non-nil while a suggestion is shown; activates `codestral-suggestion-map'.")

(defvar codestral--emulation-alist `((codestral--visible . ,codestral-suggestion-map)))
(add-to-list 'emulation-mode-map-alists 'codestral--emulation-alist)

(defvar codestral--status nil
  "What the mode-line shows: (:kind K :message M :latency MS :percent P).
K is one of the server's `codestral/status' kinds (loading, ready, error,
running, answered, declined), set from those notifications, from the model
load's $/progress and from our own requests.")

(defvar codestral-mode)                 ; defined by `define-minor-mode' below

(defvar-local codestral--overlay nil "Overlay showing the ghost text.")
(defvar-local codestral--suggestion nil
  "Plist describing the suggestion on display.
Keys: :text, the ghost text at point; :start and :end, markers of the
region the item replaces; :insert, the item's full text; :command and
:server, for reporting acceptance; :partial, characters taken so far by
partial accepts.")
(defvar-local codestral--timer nil "Pending idle timer of an automatic request.")
(defvar-local codestral--generation 0 "Counter that makes stale responses recognisable.")
(defvar-local codestral--changed nil "Non-nil when the buffer changed during this command.")
(defvar-local codestral--stash nil "Suggestion hidden before a self-insert: (POINT . SUGGESTION).")
(defvar-local codestral--inserting nil "Non-nil while codestral itself edits the buffer.")
(defvar-local codestral--point nil "Point after the last command, to see it move.")
(defvar codestral--focus nil "(BUFFER . LINE) last reported with `codestral/didFocus'.")
(defvar codestral--focus-timer nil "Pending `codestral/didFocus' timer.")

(defconst codestral--own-commands '(codestral-accept codestral-accept-word codestral-accept-line
                                                      codestral-complete)
  "Commands that do not hide the suggestion before they run.")

(defun codestral--clear ()
  "Hide the suggestion."
  (when (overlayp codestral--overlay)
    (delete-overlay codestral--overlay))
  (dolist (key '(:start :end))
    (let ((m (plist-get codestral--suggestion key)))
      (when (markerp m) (set-marker m nil))))
  (setq codestral--overlay nil
        codestral--suggestion nil
        codestral--visible nil))

(defun codestral--show (suggestion)
  "Show SUGGESTION (see `codestral--suggestion') as ghost text at point."
  (codestral--clear)
  (let ((text (plist-get suggestion :text)))
    (when (and text (> (length text) 0))
      (let ((ghost (copy-sequence text))
            (ov (make-overlay (point) (point) nil t nil)))
        (add-face-text-property 0 (length ghost) 'codestral-suggestion-face nil ghost)
        ;; Keep the cursor before the ghost text rather than after it.
        (put-text-property 0 1 'cursor t ghost)
        (overlay-put ov 'after-string ghost)
        (overlay-put ov 'codestral t)
        (overlay-put ov 'priority 1000)
        (setq codestral--overlay ov
              codestral--suggestion suggestion
              codestral--visible t)))))

(defun codestral-visible-p ()
  "Non-nil if a suggestion is shown in this buffer."
  (and codestral--visible (overlayp codestral--overlay) (overlay-buffer codestral--overlay) t))

(defun codestral-suggestion-text ()
  "The ghost text shown at point, or nil."
  (and (codestral-visible-p) (plist-get codestral--suggestion :text)))

(defun codestral--range-region (range)
  "Buffer region (BEG . END) of the LSP RANGE."
  (if (fboundp 'eglot-range-region)
      (eglot-range-region range)
    (with-no-warnings (eglot--range-region range))))

(defun codestral--item-suggestion (item server)
  "The suggestion for the InlineCompletionItem ITEM from SERVER, or nil."
  (let* ((insert (plist-get item :insertText))
         (insert (if (stringp insert) insert (plist-get insert :value)))
         (range (plist-get item :range))
         (region (if range (codestral--range-region range) (cons (point) (point))))
         (start (car region))
         (end (cdr region)))
    (when (and (stringp insert) (> (length insert) 0)
               (<= start (point)) (<= (point) end) (= end (point)))
      ;; The item may replace text before point (what was typed); show the rest.
      (let ((typed (buffer-substring-no-properties start (point))))
        (when (string-prefix-p typed insert)
          (list :text (substring insert (length typed))
                :start (copy-marker start) :end (copy-marker end t)
                :insert insert
                :command (plist-get item :command)
                :server server
                :partial 0))))))

(defun codestral--handle (buffer generation position tick server result)
  "Show the first usable item of RESULT from SERVER in BUFFER.
Only if the response is for the latest request (GENERATION) and point and
the buffer are unchanged since it was sent (POSITION, TICK)."
  (when (buffer-live-p buffer)
    (with-current-buffer buffer
      (when (and codestral-mode
                 (= generation codestral--generation)
                 (= position (point))
                 (= tick (buffer-chars-modified-tick)))
        (let ((items (if (vectorp result) result (plist-get result :items))))
          (when (eq (plist-get codestral--status :kind) 'running) ; the server said nothing itself
            (if (seq-empty-p items)
                (codestral--set-status 'declined "no suggestion")
              (codestral--set-status 'answered "")))
          (seq-some (lambda (item)
                      (let ((suggestion (codestral--item-suggestion item server)))
                        (when suggestion
                          (codestral--show suggestion)
                          t)))
                    items))))))

(defvar-local codestral--in-flight nil
  "The inline request awaiting its answer: (:server S :id ID :generation G).")

(defun codestral--async-request (server method params &rest args)
  "Send METHOD with PARAMS to SERVER like `jsonrpc-async-request' (ARGS are
its keywords), returning the request's id, or nil where jsonrpc does not say."
  (if (fboundp 'jsonrpc--async-request-1)   ; jsonrpc 1.0.x: returns (ID TIMER)
      (car (apply #'jsonrpc--async-request-1 server method params args))
    (apply #'jsonrpc-async-request server method params args)
    nil))

(defvar codestral--cancelled (make-hash-table :test #'equal)
  "Inline requests cancelled with $/cancelRequest whose reply is still due.
Keys are (SERVER-NAME ID): each server numbers its requests from 1.")

(defun codestral--receive-advice (receive connection message)
  "Around `jsonrpc-connection-receive' (RECEIVE CONNECTION MESSAGE): the server's
RequestCancelled reply to a request codestral cancelled is no error.  jsonrpc
keeps every error it receives as the connection's last error, which Eglot
shows on the mode line (`[eglot:project/error]') until the next message."
  (let* ((id (plist-get message :id))
         (key (and id (not (plist-get message :method)) (list (jsonrpc-name connection) id)))
         (ours (and key (gethash key codestral--cancelled)))
         (before (and ours (jsonrpc-last-error connection))))
    (when ours (remhash key codestral--cancelled))
    (prog1 (funcall receive connection message)
      (when (and ours (plist-get message :error))
        (setf (jsonrpc-last-error connection) before)))))

(advice-add 'jsonrpc-connection-receive :around #'codestral--receive-advice)

(defun codestral--cancel-request ()
  "Cancel the inline request in flight, if any: the server stops decoding it.
Without this every keystroke's request stayed pending, answered or timed out
long after its position was gone."
  (let ((flight codestral--in-flight))
    (setq codestral--in-flight nil)
    (when flight
      (let* ((server (plist-get flight :server))
             (id (plist-get flight :id))
             (continuations (and (jsonrpc-running-p server)
                                 (ignore-errors (jsonrpc--request-continuations server))))
             (entry (and continuations (gethash id continuations))))
        (when entry
          (remhash id continuations)
          (when (timerp (nth 2 entry)) (cancel-timer (nth 2 entry)))
          (puthash (list (jsonrpc-name server) id) t codestral--cancelled)
          (jsonrpc-notify server :$/cancelRequest (list :id id))
          (force-mode-line-update t))))))      ; not `running' any more (`codestral--lighter')


(defun codestral--request (trigger)
  "Ask the server for an inline suggestion at point.
TRIGGER is `invoked' (explicit request) or `automatic'.  Returns non-nil if
a request was sent."
  (let ((server (codestral--server)))
    (cond
     ((null server)
      (when (eq trigger 'invoked) (user-error "[codestral] no Eglot server in this buffer"))
      nil)
     ((not (codestral--capability server :inlineCompletionProvider))
      (when (eq trigger 'invoked)
        (user-error "[codestral] %s does not provide inline completions" (jsonrpc-name server)))
      nil)
     (t
      ;; Send pending edits first: Eglot batches didChange on its own idle timer.
      (eglot--signal-textDocument/didChange)
      ;; Where point rests, with the request (not a warm-up of it 50 ms before, which the
      ;; request then waits behind).
      (codestral--send-focus)
      ;; One request in flight: an older one is answered for a position that is gone.
      (codestral--cancel-request)
      (let* ((generation (cl-incf codestral--generation))
             (buffer (current-buffer))
             (position (point))
             (tick (buffer-chars-modified-tick))
             (forget (lambda ()
                       (when (buffer-live-p buffer)
                         (with-current-buffer buffer
                           (when (eql (plist-get codestral--in-flight :generation) generation)
                             (setq codestral--in-flight nil))))))
             (id (codestral--async-request
                  server :textDocument/inlineCompletion
                  (append (eglot--TextDocumentPositionParams)
                          (list :context (list :triggerKind (if (eq trigger 'invoked) 1 2))))
                  :success-fn (lambda (result)
                                (funcall forget)
                                (codestral--handle buffer generation position tick server result))
                  :error-fn (lambda (error)
                              (funcall forget)
                              (codestral--log "inline completion failed: %S" error))
                  :timeout-fn (lambda ()
                                (funcall forget)
                                (codestral--log "inline completion timed out"))
                  :timeout codestral-request-timeout)))
        (setq codestral--in-flight (list :server server :id id :generation generation))
        (codestral--set-status 'running "")
        t)))))

(defun codestral--cancel-timer ()
  "Cancel a pending automatic request."
  (when (timerp codestral--timer)
    (cancel-timer codestral--timer))
  (setq codestral--timer nil))

(defun codestral--idle-request (buffer)
  "Timer function: request a suggestion in BUFFER if it is still the one edited."
  (when (and (buffer-live-p buffer) (eq buffer (window-buffer (selected-window))))
    (with-current-buffer buffer
      (setq codestral--timer nil)
      (when codestral-mode
        (codestral--request 'automatic)))))

(defun codestral--schedule ()
  "Ask for a suggestion once Emacs has been idle for `codestral-idle-delay'.
The request in flight is cancelled when the next one goes out, not now: until
then the server goes on with it, and what it has prefilled of the file (all
but the last keystrokes) serves the next request too."
  (codestral--cancel-timer)
  (cl-incf codestral--generation)       ; responses to older requests are stale now
  (setq codestral--timer
        (run-with-idle-timer codestral-idle-delay nil #'codestral--idle-request (current-buffer))))

(defun codestral--after-change (&rest _)
  "Note an edit; hide a suggestion that an edit outside a command made stale."
  (unless codestral--inserting
    (setq codestral--changed t)
    ;; Commands other than codestral's hid it already; this catches edits made
    ;; outside commands (timers, process output, reverts).
    (when codestral--overlay
      (codestral--clear))))

(defun codestral--pre-command ()
  "Hide the suggestion before any command but codestral's own."
  (setq codestral--stash nil
        codestral--changed nil)
  (when (and codestral--overlay (not (memq this-command codestral--own-commands)))
    (when (eq this-command 'self-insert-command)
      (setq codestral--stash (cons (point) codestral--suggestion)))
    (codestral--clear)))

(defun codestral--typed-through (stash)
  "Re-show the rest of STASH's suggestion if the user typed its next character."
  (let* ((position (car stash))
         (suggestion (cdr stash))
         (text (plist-get suggestion :text)))
    (when (and text (> (length text) 1)
               (= (point) (1+ position))
               (eq (char-before) (aref text 0)))
      (codestral--show (plist-put (copy-sequence suggestion) :text (substring text 1)))
      t)))

(defun codestral--post-command ()
  "After a command: keep a typed-through suggestion, or schedule a new request."
  (let ((stash codestral--stash)
        (changed codestral--changed)
        (moved (not (eql codestral--point (point)))))
    (setq codestral--stash nil
          codestral--changed nil
          codestral--point (point))
    (cond ((memq this-command codestral--own-commands))
          ((and stash (codestral--typed-through stash))
           (codestral--cancel-timer))
          ((and changed codestral-auto-trigger)
           (codestral--schedule))
          ((and moved codestral-auto-trigger codestral-trigger-on-move (not (use-region-p))
                (not (minibufferp)))
           (codestral--schedule))
          (t (codestral--cancel-timer)))
    ;; A request on its way tells the server where point rests; else say it on its own.
    (if (timerp codestral--timer)
        (when (timerp codestral--focus-timer) (cancel-timer codestral--focus-timer))
      (codestral--note-focus))))

;;;###autoload
(define-minor-mode codestral-mode
  "Show local code suggestions from codestral-ls as ghost text.
Needs a buffer managed by Eglot with codestral-ls.  While a suggestion is
shown, \\<codestral-suggestion-map>\\[codestral-accept] accepts it and \\[codestral-accept-word] accepts its next word;
any other command hides it.

\\{codestral-mode-map}"
  :lighter (:eval (codestral--lighter))
  :keymap codestral-mode-map
  (codestral--clear)
  (codestral--cancel-timer)
  (codestral--cancel-request)
  (if codestral-mode
      (progn
        (add-hook 'after-change-functions #'codestral--after-change nil t)
        (add-hook 'pre-command-hook #'codestral--pre-command nil t)
        (add-hook 'post-command-hook #'codestral--post-command nil t)
        (codestral--no-did-save))
    (remove-hook 'after-change-functions #'codestral--after-change t)
    (remove-hook 'pre-command-hook #'codestral--pre-command t)
    (remove-hook 'post-command-hook #'codestral--post-command t)))

(defun codestral--no-did-save ()
  "Send no textDocument/didSave to a server that asks for none.
Eglot 1.9 sends it (with the whole text) on every save whatever the server's
`textDocumentSync.save' says; codestral-ls declares `save: false'."
  (let* ((server (codestral--server))
         (sync (and server (codestral--capability server :textDocumentSync)))
         (save (and (listp sync) (plist-member sync :save) (plist-get sync :save))))
    (when (and server (listp sync) (plist-member sync :save)
               (or (null save) (eq save :json-false)))
      (remove-hook 'after-save-hook 'eglot--signal-textDocument/didSave t))))

;;;###autoload
(defun codestral-maybe-enable ()
  "Turn `codestral-mode' on if Eglot manages this buffer with codestral-ls.
Turn it off otherwise.  Meant for `eglot-managed-mode-hook'."
  (if (and (eglot-managed-p) (codestral--server-p (codestral--server)))
      (codestral-mode 1)
    (when codestral-mode (codestral-mode -1))))

(defun codestral-complete ()
  "Ask for a suggestion at point now."
  (interactive)
  (codestral--cancel-timer)
  (codestral--clear)
  (codestral--request 'invoked))

(defun codestral-dismiss ()
  "Hide the suggestion."
  (interactive)
  (codestral--cancel-timer)
  (codestral--clear))

(defun codestral--insert (text)
  "Insert TEXT at point as codestral's own edit."
  (let ((codestral--inserting t))
    (insert text))
  (setq codestral--changed t))

(defun codestral-accept ()
  "Insert the whole suggestion and tell the server it was accepted."
  (interactive)
  (unless (codestral-visible-p)
    (user-error "[codestral] no suggestion"))
  (let* ((suggestion codestral--suggestion)
         (start (plist-get suggestion :start))
         (end (plist-get suggestion :end))
         (start (and (markerp start) (marker-position start)))
         (end (and (markerp end) (marker-position end)))
         (text (plist-get suggestion :text))
         (partial (plist-get suggestion :partial))
         (server (plist-get suggestion :server))
         (command (plist-get suggestion :command)))
    (codestral--clear)
    (if (and start end (zerop partial) (<= start (point)) (= end (point)))
        ;; Replace the item's range with its text, as LSP says.
        (let ((codestral--inserting t))
          (delete-region start end)
          (goto-char start)
          (insert (plist-get suggestion :insert))
          (setq codestral--changed t))
      (codestral--insert text))
    (if (zerop partial)
        (codestral--send-command server command)
      (codestral--notify-partial server command (length text)))
    ;; What follows the accepted text shows without another keystroke.
    (when codestral-auto-trigger
      (codestral--schedule))))

(defun codestral--accept-part (n)
  "Insert the first N characters of the suggestion and keep showing the rest."
  (let* ((suggestion codestral--suggestion)
         (text (plist-get suggestion :text)))
    (if (>= n (length text))
        (codestral-accept)
      (codestral--clear)
      (codestral--insert (substring text 0 n))
      (codestral--notify-partial (plist-get suggestion :server) (plist-get suggestion :command) n)
      (codestral--show (append (list :text (substring text n)
                                     :partial (+ n (plist-get suggestion :partial)))
                               suggestion)))))

(defun codestral-accept-word ()
  "Insert the next word of the suggestion and keep showing the rest."
  (interactive)
  (unless (codestral-visible-p)
    (user-error "[codestral] no suggestion"))
  (let ((text (plist-get codestral--suggestion :text)))
    (codestral--accept-part (if (string-match "\\`\\W*\\w+" text) (match-end 0) (length text)))))

(defun codestral-accept-line ()
  "Insert the suggestion up to the end of its first line (with the line break).
The rest stays shown."
  (interactive)
  (unless (codestral-visible-p)
    (user-error "[codestral] no suggestion"))
  (let ((text (plist-get codestral--suggestion :text)))
    (codestral--accept-part (if (string-match "\n" text) (match-end 0) (length text)))))

;;;; What the server says: status, progress, longer suggestions

(defun codestral--set-status (kind message &optional latency)
  "Record status KIND with MESSAGE (and LATENCY in ms) and update mode lines.
Entering `running' keeps the status before it as :before, shown again when
nothing is in flight (see `codestral--lighter')."
  (let ((old codestral--status))
    (setq codestral--status
          (list :kind kind :message (or message "")
                :latency (or latency (plist-get old :latency))
                :percent (and (eq kind 'loading) (plist-get old :percent))
                :before (and (eq kind 'running)
                             (if (eq (plist-get old :kind) 'running)
                                 (plist-get old :before)
                               old)))))
  (force-mode-line-update t))

(defun codestral--in-flight-p ()
  "Non-nil if an inline request of codestral's awaits its answer in any buffer."
  (seq-some (lambda (buffer) (buffer-local-value 'codestral--in-flight buffer)) (buffer-list)))

(defun codestral--lighter ()
  "The mode-line lighter of `codestral-mode': what the server is doing.
`running' only while a request is in flight: the server says nothing more
about a request codestral cancelled, and may say `running' for it after the
cancel went out."
  (let* ((status (if (and (eq (plist-get codestral--status :kind) 'running)
                          (not (codestral--in-flight-p)))
                     (plist-get codestral--status :before)
                   codestral--status))
         (kind (plist-get status :kind))
         (message (plist-get status :message))
         (latency (plist-get status :latency))
         (percent (plist-get status :percent)))
    (concat " Codestral"
            (pcase kind
              ;; "%" is a mode-line construct: "%%" shows one.
              ('loading (format "[loading%s]" (if percent (format " %d%%%%" percent) "")))
              ('running "[…]")
              ('answered (if latency (format "[%dms]" (round latency)) ""))
              ('declined (format "[%s]" (string-replace "%" "%%" (if (string-empty-p message)
                                                                     "no suggestion"
                                                                   message))))
              ('error (format "[error: %s]" (string-replace "%" "%%" message)))
              (_ "")))))

(defun codestral--process-p (server)
  "Non-nil if SERVER is codestral-ls, before it has said so itself.
That is, started from our Eglot entry, or (\\[eglot] with a command of one's
own) a program whose command line names codestral."
  (or (cl-typep server 'codestral-lsp-server)
      (let ((process (ignore-errors (jsonrpc--process server))))
        (and (processp process)
             (cl-some (lambda (arg) (and (stringp arg) (string-match-p "codestral" arg)))
                      (process-command process))))))

(cl-defmethod eglot-client-capabilities :around (server)
  "Opt codestral-ls servers in to its extensions and to $/progress."
  (let ((capabilities (cl-call-next-method)))
    (if (not (codestral--process-p server))
        capabilities
      (let ((window (copy-sequence (plist-get capabilities :window))))
        (setq capabilities (plist-put (copy-sequence capabilities) :window
                                      (plist-put window :workDoneProgress t)))
        (plist-put capabilities :experimental
                   (list :codestral (list :suggestionUpdates t :status t)))))))

(cl-defmethod eglot-handle-notification :after
  (_server (_method (eql $/progress)) &key token value &allow-other-keys)
  "Show the model load's progress on the mode line (Eglot 1.9 shows none)."
  (when (equal token "codestral-ls/model-load")
    (let ((kind (plist-get value :kind)))
      (if (equal kind "end")
          (progn (codestral--set-status 'ready (plist-get value :message))
                 (message "[codestral] model loaded")
                 (codestral--ask-when-loaded))
        (codestral--set-status 'loading (plist-get value :message))
        (when (plist-get value :percentage)
          (setq codestral--status (plist-put codestral--status :percent
                                             (plist-get value :percentage))))
        (message "[codestral] loading the model%s"
                 (if (plist-get value :percentage)
                     (format " %d%%" (plist-get value :percentage)) ""))))))

(cl-defmethod eglot-handle-notification
  (_server (_method (eql codestral/status)) &key kind message latencyMs &allow-other-keys)
  "The server's status: loading, ready, error, running, answered, declined."
  (let ((kind (intern kind))
        (was (plist-get codestral--status :kind)))
    (codestral--set-status kind message (and (numberp latencyMs) latencyMs))
    (when (and (eq kind 'ready) (eq was 'loading))
      (codestral--ask-when-loaded))
    (when (eq kind 'error)
      (message "[codestral] %s" message))))

(defun codestral--ask-when-loaded ()
  "The model is ready: ask again in the selected buffer, whose request while
the model loaded was answered with nothing (if it asked: no edit, no request)."
  (let ((buffer (window-buffer (selected-window))))
    (with-current-buffer buffer
      (when (and codestral-mode codestral-auto-trigger (> codestral--generation 0)
                 (not (codestral-visible-p)))
        (codestral--schedule)))))

(defun codestral--uri-buffer (uri)
  "The live buffer visiting URI, or nil."
  (let ((file (ignore-errors (eglot--uri-to-path uri))))
    (and file (find-buffer-visiting file))))

(cl-defmethod eglot-handle-notification
  (_server (_method (eql codestral/suggestionUpdated)) &key textDocument position &allow-other-keys)
  "The server has a longer suggestion at POSITION in TEXTDOCUMENT.
Ask again if point is still there."
  (let ((buffer (codestral--uri-buffer (plist-get textDocument :uri))))
    (when (and buffer (eq buffer (window-buffer (selected-window))))
      (with-current-buffer buffer
        (when codestral-mode
          (let* ((at (save-excursion (eglot--lsp-position-to-point position)))
                 (start (plist-get codestral--suggestion :start))
                 (start (and (markerp start) (marker-position start))))
            ;; Point where it was asked, or where typing went along the ghost text from there.
            (when (or (= at (point))
                      (and (codestral-visible-p) start (= start at)))
              (codestral--cancel-timer)
              (codestral--request 'automatic))))))))


(defun codestral--send-focus ()
  "Tell the server where point rests, if it moved to another line or buffer."
  (when (timerp codestral--focus-timer)
    (cancel-timer codestral--focus-timer))
  (setq codestral--focus-timer nil)
  (when codestral-mode
    (let* ((server (codestral--server))
           (experimental (and server (codestral--capability server :experimental)))
           (ours (and (listp experimental) (plist-get experimental :codestral)))
           (here (cons (current-buffer) (line-number-at-pos))))
      (when (and ours (plist-get ours :didFocus) (not (equal here codestral--focus)))
        (setq codestral--focus here)
        (eglot--signal-textDocument/didChange)
        (jsonrpc-notify server :codestral/didFocus
                        (list :textDocument (eglot--TextDocumentIdentifier)
                              :position (eglot--pos-to-lsp-position)))))))

(defun codestral--note-focus ()
  "After a command: report the place point rests at, 0.2 s later."
  (when (timerp codestral--focus-timer)
    (cancel-timer codestral--focus-timer))
  (setq codestral--focus-timer
        (run-with-idle-timer 0.2 nil
                             (lambda (buffer)
                               (when (and (buffer-live-p buffer)
                                          (eq buffer (window-buffer (selected-window))))
                                 (with-current-buffer buffer (codestral--send-focus))))
                             (current-buffer))))

(defun codestral-unload-function ()
  "Remove the advice, keymap and Eglot entries added by loading codestral.
Called by `unload-feature'."
  (advice-remove 'eglot-completion-at-point #'codestral--completion-exit-advice)
  (advice-remove 'jsonrpc-connection-receive #'codestral--receive-advice)
  (setq emulation-mode-map-alists (delq 'codestral--emulation-alist emulation-mode-map-alists))
  (setq eglot-server-programs (seq-remove #'codestral--entry-p eglot-server-programs))
  nil)                                  ; nil: go on with the standard unloading

(provide 'codestral)
;;; codestral.el ends here
