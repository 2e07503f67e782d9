;;; codestral-tests.el --- Batch tests of codestral.el against the real server  -*- lexical-binding: t; -*-

;; Run through test.sh:
;;   emacs --batch -L DIR -l codestral-tests.el -f ert-run-tests-batch-and-exit
;; The server comes from $CODESTRAL_LS.  Tests run in name order and share one
;; server (one model load): 0 needs no server, 1 starts it, 9 shuts it down.

;;; Code:

(require 'ert)
(require 'cl-lib)
(unless (require 'eglot nil t)          ; eglot from package.el rather than Debian/Emacs
  (package-initialize)
  (require 'eglot))
(require 'codestral)

(defconst codestral-test-program (or (getenv "CODESTRAL_LS") "codestral-ls"))
(defconst codestral-test-text "def add(a, b):\n    return "
  "The known-good buffer: the model completes it with \"a + b\".")
(defconst codestral-test-timeout (string-to-number (or (getenv "CODESTRAL_TEST_TIMEOUT") "240"))
  "Seconds to wait for anything involving the model (load, then CPU inference).")
(defconst codestral-test-dir (file-name-as-directory (make-temp-file "codestral-el-" t)))
(add-hook 'kill-emacs-hook (lambda () (delete-directory codestral-test-dir t)))

(setq codestral-server-command (list codestral-test-program)
      codestral-initialization-options '(:budgetMs 0) ; wait for the whole suggestion
      eglot-sync-connect t                  ; `eglot' returns once the server is initialized
      eglot-connect-timeout codestral-test-timeout
      ;; The first completion waits for the model; a 2-core CPU shared with other jobs is slow.
      jsonrpc-default-request-timeout codestral-test-timeout)
(add-hook 'eglot-managed-mode-hook #'codestral-maybe-enable) ; as the README says

(defvar codestral-test--server nil "The server shared by the tests.")

(defun codestral-test--wait (predicate timeout what)
  "Process events until PREDICATE is non-nil, for at most TIMEOUT seconds.
Batch Emacs runs no idle timers, so this only pumps process output."
  (let ((deadline (+ (float-time) timeout))
        value)
    (while (and (not (setq value (funcall predicate))) (< (float-time) deadline))
      (accept-process-output nil 0.1))
    (or value (ert-fail (format "timed out after %ss waiting for %s (ghost text: %S)"
                                timeout what (codestral-suggestion-text))))))

(defun codestral-test--visit (name text)
  "Visit a new file NAME holding TEXT, show it, point at its end."
  (let ((file (expand-file-name name codestral-test-dir)))
    (with-temp-file file (insert text))
    (let ((buffer (find-file-noselect file)))
      (switch-to-buffer buffer)             ; the command loop reads keys in this buffer
      (goto-char (point-max))
      buffer)))

(defun codestral-test--line ()
  "The text of the line at point."
  (buffer-substring-no-properties (line-beginning-position) (line-end-position)))

(defun codestral-test--stat (key)
  "Counter KEY of the server's `codestral/stats'."
  (plist-get (codestral--stats codestral-test--server) key))

(defun codestral-test--server ()
  "Start the server for the current buffer through `eglot-server-programs', once.
Then wait until the model is loaded."
  (unless (and codestral-test--server (jsonrpc-running-p codestral-test--server))
    (let ((t0 (float-time)))
      (apply #'eglot (eglot--guess-contact))
      (setq codestral-test--server (eglot-current-server))
      (should codestral-test--server)
      (should (cl-typep codestral-test--server 'codestral-lsp-server)) ; from our Eglot entry
      (message "server initialized in %.1fs: %s" (- (float-time) t0)
               (plist-get (eglot--server-info codestral-test--server) :name))
      (let ((model (codestral-test--wait (lambda () (codestral-test--stat :model))
                                         codestral-test-timeout "the model to load")))
        (message "model ready in %.1fs: %S" (- (float-time) t0) model)
        (should-not (plist-get model :error)))))
  (should (eq (eglot-current-server) codestral-test--server))
  codestral-test--server)

(ert-deftest codestral-0-registration ()
  "`eglot-server-programs' maps the modes to codestral-ls with language ids."
  (pcase-dolist (`(,mode . ,language) '((python-mode . "python") (python-ts-mode . "python")
                                        (js-mode . "javascript") (typescript-ts-mode . "typescript")
                                        (tsx-ts-mode . "typescriptreact") (go-mode . "go")
                                        (rust-mode . "rust") (c-mode . "c") (c++-mode . "cpp")
                                        (java-mode . "java")))
    ;; The first entry naming MODE is codestral's (Eglot picks the first match).
    (let ((entry (cl-find-if (lambda (e)
                               (memq mode (mapcar (lambda (m) (car (ensure-list m)))
                                                  (if (or (symbolp (car e)) (keywordp (cadr (car e))))
                                                      (list (car e))
                                                    (car e)))))
                             eglot-server-programs)))
      (should (codestral--entry-p entry))
      (should (equal (plist-get (cdr (assq mode (car entry))) :language-id) language))))
  (when (fboundp 'eglot--lookup-mode)   ; Eglot 1.9's lookup: (MODES LANGUAGE-ID CONTACT)
    (let ((found (eglot--lookup-mode 'c++-mode)))
      (should (equal (nth 1 found) "cpp"))
      (should (eq (nth 2 found) 'codestral--eglot-contact))))
  ;; Our server class first: Eglot makes the connection a `codestral-lsp-server', which opts in to
  ;; codestral's extensions whatever the program is called.
  (should (equal (codestral--eglot-contact)
                 (list 'codestral-lsp-server codestral-test-program :initializationOptions '(:budgetMs 0))))
  ;; Registering again replaces rather than duplicates.
  (let ((n (length eglot-server-programs)))
    (codestral-eglot-register)
    (should (= n (length eglot-server-programs)))))

(ert-deftest codestral-0-accept-line ()
  "C-M-f takes the suggestion up to its first line break; the rest stays shown."
  (with-temp-buffer
    (insert "if x:\n    ")
    (codestral--show (list :text "a = 1\n    b = 2" :partial 0))
    (should (eq (key-binding (kbd "C-M-f")) #'codestral-accept-line))
    (codestral-accept-line)
    (should (equal (buffer-string) "if x:\n    a = 1\n"))
    (should (equal (codestral-suggestion-text) "    b = 2"))
    (codestral-accept-line)                 ; the last line: all of it
    (should (equal (buffer-string) "if x:\n    a = 1\n    b = 2"))
    (should-not (codestral-visible-p))))

(ert-deftest codestral-1-completion-at-point ()
  "Eglot's completion-at-point offers and inserts the suggestion, and reports it."
  (with-current-buffer (codestral-test--visit "capf.py" codestral-test-text)
    (codestral-test--server)
    (should (eglot-managed-p))
    (should codestral-mode)                 ; by `codestral-maybe-enable'
    (should (codestral--capability codestral-test--server :inlineCompletionProvider))
    (let* ((accepted (codestral-test--stat :accepted))
           (t0 (float-time))
           (capf (eglot-completion-at-point))
           (candidates (all-completions "" (nth 2 capf))))
      (message "completion candidates after %.1fs: %S" (- (float-time) t0) candidates)
      (should (cl-some (lambda (c) (string-match-p (regexp-quote "a + b") c)) candidates))
      (let ((completion-at-point-functions '(eglot-completion-at-point)))
        (completion-at-point))
      (should (equal (codestral-test--line) "    return a + b"))
      (should (equal (buffer-string) "def add(a, b):\n    return a + b"))
      ;; The exit function sent the item's codestral.accept command.
      (codestral-test--wait (lambda () (> (codestral-test--stat :accepted) accepted))
                            30 "the accept command"))))

(ert-deftest codestral-2-inline-tab ()
  "codestral-mode: an edit schedules a request, ghost text shows, TAB accepts."
  (with-current-buffer (codestral-test--visit "inline.py" "def add(a, b):\n    return")
    (codestral-test--server)
    (should (eglot-managed-p))              ; picked up by the running server
    (should codestral-mode)                 ; by `codestral-maybe-enable'

    (let ((accepted (codestral-test--stat :accepted))
          (t0 (float-time)))
      (execute-kbd-macro (kbd "SPC"))       ; an edit, as the user would type it
      (should (equal (codestral-test--line) "    return "))
      ;; The edit armed the debounce timer; batch Emacs is never idle, so fire it by hand.
      (should (timerp codestral--timer))
      (should (memq codestral--timer timer-idle-list))
      (let ((timer codestral--timer))
        (cancel-timer timer)
        (apply (timer--function timer) (timer--args timer)))
      (codestral-test--wait #'codestral-visible-p codestral-test-timeout "the ghost text")
      (message "ghost text after %.1fs: %S" (- (float-time) t0) (codestral-suggestion-text))
      (should (equal (codestral-suggestion-text) "a + b"))
      (let ((ghost (overlay-get codestral--overlay 'after-string)))
        (should (equal (substring-no-properties ghost) "a + b"))
        (should (memq 'codestral-suggestion-face (ensure-list (get-text-property 0 'face ghost)))))
      (should (equal (codestral-test--line) "    return ")) ; ghost text is not buffer text
      ;; Moving hides it, and asks again where point comes to rest...
      (execute-kbd-macro (kbd "C-b"))
      (should-not (codestral-visible-p))
      (should (timerp codestral--timer))
      (codestral-dismiss)
      ;; ...unless `codestral-trigger-on-move' is off.
      (let ((codestral-trigger-on-move nil))
        (execute-kbd-macro (kbd "C-f"))
        (should-not codestral--timer))
      ;; Ask explicitly this time.
      (codestral-complete)
      (codestral-test--wait #'codestral-visible-p codestral-test-timeout "the ghost text again")
      (should (equal (codestral-suggestion-text) "a + b"))
      (execute-kbd-macro (kbd "TAB"))
      (should (equal (codestral-test--line) "    return a + b"))
      (should (= (point) (point-max)))
      (should-not (codestral-visible-p))
      (codestral-test--wait (lambda () (> (codestral-test--stat :accepted) accepted))
                            30 "the accept command"))))

(ert-deftest codestral-3-inline-word-then-tab ()
  "M-f takes one word of the suggestion, TAB the rest; typing through keeps it."
  (with-current-buffer (codestral-test--visit "inline2.py" codestral-test-text)
    (codestral-test--server)
    (should codestral-mode)
    (let ((partial (codestral-test--stat :partially_accepted)))
      (codestral-complete)
      (codestral-test--wait #'codestral-visible-p codestral-test-timeout "the ghost text")
      (should (equal (codestral-suggestion-text) "a + b"))
      (execute-kbd-macro (kbd "M-f"))
      (should (equal (codestral-test--line) "    return a"))
      (should (equal (codestral-suggestion-text) " + b"))
      (execute-kbd-macro (kbd "SPC"))       ; typed what the ghost text shows: it stays
      (should (equal (codestral-test--line) "    return a "))
      (should (equal (codestral-suggestion-text) "+ b"))
      (should-not codestral--timer)
      (execute-kbd-macro (kbd "TAB"))
      (should (equal (codestral-test--line) "    return a + b"))
      (should-not (codestral-visible-p))
      (codestral-test--wait (lambda () (>= (codestral-test--stat :partially_accepted) (+ partial 2)))
                            30 "the partial-accept notifications"))
    (codestral-dismiss)))

(ert-deftest codestral-4-stale-requests-cancelled ()
  "A new request cancels the one in flight: the server is told ($/cancelRequest)
and the old answer is not awaited, so requests never queue up behind each other."
  (with-current-buffer (codestral-test--visit "stale.py" "def sub(a, b):\n    return ")
    (codestral-test--server)
    (should codestral-mode)
    (let ((sent '()))
      (cl-letf* ((notify (symbol-function 'jsonrpc-notify))
                 ((symbol-function 'jsonrpc-notify)
                  (lambda (conn method params)
                    (when (eq method :$/cancelRequest) (push (plist-get params :id) sent))
                    (funcall notify conn method params))))
        (codestral--request 'invoked)
        (let ((first (plist-get codestral--in-flight :id)))
          (should first)
          (insert "a")                      ; the user types on: the first answer is stale
          (codestral--request 'invoked)
          (let ((second (plist-get codestral--in-flight :id))
                (continuations (jsonrpc--request-continuations codestral-test--server)))
            (should (equal sent (list first)))
            (should-not (gethash first continuations)) ; not awaited any more
            (should (gethash second continuations))
            (codestral-test--wait (lambda () (null codestral--in-flight))
                                  codestral-test-timeout "the second answer")
            (should (= (hash-table-count continuations) 0))))))
    (codestral-dismiss)))

(ert-deftest codestral-4-cancelled-is-no-error ()
  "A request cancelled with nothing after it: the server's RequestCancelled reply
does not become Eglot's last error (its mode line's `error'), and the lighter
does not stay at `running' with nothing in flight."
  (with-current-buffer (codestral-test--visit "cancelled.py" "def mul(a, b):\n    return ")
    (codestral-test--server)
    (should codestral-mode)
    (setf (jsonrpc-last-error codestral-test--server) nil)
    (let ((replies '())
          (before (codestral--lighter)))
      (cl-letf* ((receive (symbol-function 'jsonrpc-connection-receive))
                 ((symbol-function 'jsonrpc-connection-receive)
                  (lambda (conn message)
                    (when (and (plist-get message :id) (not (plist-get message :method)))
                      (push message replies))
                    (funcall receive conn message))))
        (codestral--request 'invoked)
        (let ((id (plist-get codestral--in-flight :id)))
          (should (equal (codestral--lighter) " Codestral[…]"))
          (codestral--cancel-request)
          (should (equal (codestral--lighter) before))
          (codestral-test--wait (lambda () (seq-find (lambda (m) (equal (plist-get m :id) id)) replies))
                                codestral-test-timeout "the reply to the cancelled request")
          (let ((reply (seq-find (lambda (m) (equal (plist-get m :id) id)) replies)))
            (message "reply to the cancelled request: %S" reply)
            (when (plist-get reply :error)  ; else the server had answered before the cancel came
              (should-not (jsonrpc-last-error codestral-test--server))))
          ;; The server's `running' for it may come after the cancel: still not shown.
          (should (equal (codestral--lighter) before)))))
    (codestral-dismiss)))

(ert-deftest codestral-5-ask-again-after-accept ()
  "After TAB the next suggestion is asked for with no keystroke."
  (with-current-buffer (codestral-test--visit "again.py" codestral-test-text)
    (codestral-test--server)
    (codestral-complete)
    (codestral-test--wait #'codestral-visible-p codestral-test-timeout "the ghost text")
    (let ((shown (codestral-suggestion-text)))
      (execute-kbd-macro (kbd "TAB"))
      (should (equal (codestral-test--line) (concat "    return " shown))))
    ;; The accept armed the idle timer; batch Emacs is never idle, so fire it by hand.
    (should (timerp codestral--timer))
    (let ((timer codestral--timer))
      (cancel-timer timer)
      (apply (timer--function timer) (timer--args timer)))
    (should codestral--in-flight)
    (codestral-test--wait (lambda () (null codestral--in-flight)) codestral-test-timeout "the answer")
    (codestral-dismiss)))

(ert-deftest codestral-6-server-notifications ()
  "codestral/status drives the lighter; codestral/suggestionUpdated at point asks again."
  (with-current-buffer (codestral-test--visit "notes.py" codestral-test-text)
    (codestral-test--server)
    (let ((server codestral-test--server)
          (saved codestral--status))
      (eglot-handle-notification server 'codestral/status :kind "loading" :message "model" :latencyMs nil)
      (should (string-match-p "loading" (codestral--lighter)))
      (eglot-handle-notification server 'codestral/status :kind "answered" :message "" :latencyMs 123.4)
      (should (equal (codestral--lighter) " Codestral[123ms]"))
      (eglot-handle-notification server 'codestral/status :kind "declined" :message "language disabled")
      (should (equal (codestral--lighter) " Codestral[language disabled]"))
      (setq codestral--status saved)
      ;; Elsewhere in the file: nothing; at point: a request goes out.
      (let ((uri (eglot--path-to-uri buffer-file-name)))
        (eglot-handle-notification server 'codestral/suggestionUpdated
                                   :textDocument (list :uri uri) :position (list :line 0 :character 0))
        (should-not codestral--in-flight)
        (eglot-handle-notification server 'codestral/suggestionUpdated
                                   :textDocument (list :uri uri) :position (eglot--pos-to-lsp-position))
        (should codestral--in-flight)
        (codestral-test--wait #'codestral-visible-p codestral-test-timeout "the ghost text")
        (should (string-prefix-p "a" (codestral-suggestion-text)))))
    (codestral-dismiss)))

(ert-deftest codestral-7-suggestion-grows ()
  "With a 1 ms budget the server answers a block's first line, then says
codestral/suggestionUpdated as it decodes the rest: the ghost text grows with
no keystroke."
  (with-current-buffer (codestral-test--visit "fib.py" "def fib(n):\n    ")
    (codestral-test--server)
    (let ((server codestral-test--server)
          (updates 0)
          (count-lines (lambda () (1+ (cl-count ?\n (or (codestral-suggestion-text) ""))))))
      (unless (plist-get (plist-get (codestral--capability server :experimental) :codestral)
                         :suggestionUpdates)
        (ert-skip "the server does not send codestral/suggestionUpdated"))
      (jsonrpc-notify server :workspace/didChangeConfiguration
                      '(:settings (:codestral (:budgetMs 1 :multiline "always"))))
      (unwind-protect
          (cl-letf* ((handle (symbol-function 'eglot-handle-notification))
                     ((symbol-function 'eglot-handle-notification)
                      (lambda (conn method &rest params)
                        (when (eq method 'codestral/suggestionUpdated) (cl-incf updates))
                        (apply handle conn method params))))
            (codestral--request 'automatic)
            (codestral-test--wait #'codestral-visible-p codestral-test-timeout "the ghost text")
            (let ((first (funcall count-lines)))
              (message "first drawn: %d line(s): %S" first (codestral-suggestion-text))
              (codestral-test--wait (lambda () (> (funcall count-lines) first))
                                    codestral-test-timeout "the ghost text to grow")
              (message "grown to %d lines after %d codestral/suggestionUpdated"
                       (funcall count-lines) updates)
              (should (> updates 0))
              (should (equal (buffer-string) "def fib(n):\n    "))))
        (jsonrpc-notify server :workspace/didChangeConfiguration
                        '(:settings (:codestral (:budgetMs 0))))
        (codestral-dismiss)))))

(ert-deftest codestral-9-shutdown ()
  "The server shuts down cleanly."
  (when codestral-test--server
    (let ((process (jsonrpc--process codestral-test--server)))
      (eglot-shutdown codestral-test--server)
      (codestral-test--wait (lambda () (not (process-live-p process))) 30 "the server to exit"))))

;;; codestral-tests.el ends here
